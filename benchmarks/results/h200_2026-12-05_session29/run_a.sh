#!/bin/bash
# NOT RUN on an H200: in session 29 no device machine could be started (18 calls over 2.5 h, for H200s and H100s),
# nor in session 30 until its twelfth call (11 failed starts), which got an H100: results/h100_2026-12-06_session30/ has
# call a in its short form (BASE=) and call b (in two calls) from there; call c is still not run.
# Session 29, call a (a1_same_call_titan/): the acceptance measurement on this tree (be5b6c9 +
# this script): sessions 27-28 changed the kernels' code (merge_tail, the two-deal
# `_balanced_order`) without an H200 run of the production tiles. Both proxies from 9730d8e's tree
# (.peers/base: the kernels as in run (r)) and this one, torchtitan's proxies, and the tiny
# recipe's bf16 loss in both trees, one call.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/
#   mkdir -p .peers/base && git archive 9730d8e moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   (BASE= bash run_a.sh: this tree and torchtitan only, for a short device budget)
#   .whl: ml_collections grain array_record portpicker tensorboardX wheels; carry [".whl", ".peers"]
set -u -o pipefail
BASE=${BASE-.peers/base} OUT=$OUT/a1_same_call_titan bash benchmarks/proxies_vs_titan.sh

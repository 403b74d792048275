#!/bin/bash
# Session 36, call a (ran in call c, on an H100, with BASE=; see run_c.sh): the acceptance
# measurement on an H200 for this tree (no H200 since session 25; sessions 26-35 changed the kernels'
# code: merge_tail, the two-deal `_balanced_order`, and the train step's builder). Session 25's call a:
# a1_check/ (grouped_gemm.py's small-shape check of every kernel variant against float64) and
# a2_same_call_titan/ (both proxies from .peers/base, here 4c54bb9's tree: session 25's run (r), the
# last H200 acceptance, and this tree, torchtitan's proxies, the tiny recipe's bf16 loss in both).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/
#   mkdir -p .peers/base && git archive 4c54bb9 moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers"]
bash benchmarks/results/h200_2026-12-05_session25/run_a.sh

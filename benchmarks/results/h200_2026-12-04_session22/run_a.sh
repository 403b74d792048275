#!/bin/bash
# Ran on commit 2d6e332 (kernels as in session 19: swap-AB remainder tiles in tiles.json).
# Session 22, call a (a1_same_call_titan/): issue 18's acceptance measurement on the current code,
# which no same-call run had measured since run (p) (commit a06d1d3, session 16): both proxies
# from a06d1d3's tree (.peers/base) and this tree, torchtitan's proxies, and the tiny recipe's
# bf16 loss in both trees.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/
#   mkdir -p .peers/base && git archive a06d1d3 moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers"]
BASE=.peers/base OUT=$OUT/a1_same_call_titan bash benchmarks/proxies_vs_titan.sh

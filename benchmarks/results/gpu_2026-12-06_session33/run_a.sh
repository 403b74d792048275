#!/bin/bash
# Session 33, call a: issue 18's acceptance measurement at this tree (whose last H200 proxies run was
# session 25's (r); sessions 26-32 changed the embedding, the unfused loss and the grouped GEMM's
# deal, no table tile): this tree's proxies and torchtitan's, same call, plus the tiny recipe's loss.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers/torchtitan"]
set -u -o pipefail
BASE= OUT=$OUT/a1_same_call_titan bash benchmarks/proxies_vs_titan.sh

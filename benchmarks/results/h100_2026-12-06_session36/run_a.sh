#!/bin/bash
# Session 36, call a (ran in call c, on an H100; see run_c.sh): the acceptance measurement on an H200 for this tree (no H200 since session 25;
# sessions 26-35 changed the kernels' code: merge_tail, the two-deal `_balanced_order`, and the
# train step's builder). a1_check/: grouped_gemm.py's small-shape check of every kernel variant
# against float64. a2_same_call_titan/: both proxies from 4c54bb9's tree (.peers/base: session 25's
# run (r), the last H200 acceptance) and this tree, torchtitan's proxies, and the tiny recipe's
# bf16 loss in both trees, one call.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/
#   mkdir -p .peers/base && git archive 4c54bb9 moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers"]
set -u -o pipefail
source benchmarks/device_env.sh
F='^WARNING|bfc_allocator'
O=$OUT/a1_check; mkdir -p $O
(cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only) 2>&1 | grep -vE "$F" > $O/check.log
tail -n 6 $O/check.log
grep -q WRONG $O/check.log && exit 1
BASE=${BASE-.peers/base} OUT=$OUT/a2_same_call_titan bash benchmarks/proxies_vs_titan.sh

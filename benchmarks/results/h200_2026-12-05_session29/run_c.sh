#!/bin/bash
# NOT RUN on an H200: in session 29 no device machine could be started (18 calls over 2.5 h, for H200s and H100s),
# nor in session 30 until its twelfth call (11 failed starts), which got an H100: results/h100_2026-12-06_session30/ has
# call a in its short form (BASE=) and call b (in two calls) from there; this call c is still not run.
# Session 31's H200 calls (results/h200_2026-12-06_session31/) got no machine either; this call is still not run.
# Session 29, call c. c0_check/: grouped_gemm.py's small-shape check of this tree's kernels
# against float64 (every variant). c1_mixtral_micro_batches/: session 26's run_a.sh, never run (it needs an
# H200: Mixtral width at two micro-batches ran out of an H100's 80 GB). The micro-batch scan with
# the forward+backward traced once (gradient_accumulation's grad_fn jitted, 116b8b3-f7b0d0f)
# against 4c54bb9's tree, both with --config.train.micro_batch_size=2, step times only.
#   mkdir -p .peers/mb_base && git archive 4c54bb9 moejax kernels configs train.py benchmarks | tar -x -C .peers/mb_base
#   carry [".whl", ".peers"]
set -u -o pipefail
(source benchmarks/device_env.sh; mkdir -p $OUT/c0_check; cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py \
  --check-only 2>&1 | grep -vE '^WARNING|bfc_allocator' > $OUT/c0_check/check.log; tail -n 6 $OUT/c0_check/check.log)
PROXIES=mixtral_width TINY=0 TITAN=none BASE=.peers/mb_base OUT=$OUT/c1_mixtral_micro_batches \
  bash benchmarks/proxies_vs_titan.sh --config.train.micro_batch_size=2

#!/bin/bash
# Session 38, call a (~120 s on any Hopper GPU, ~450 s on an H200). NOT RUN in session 38: every
# request for a machine (H200 and H100) was refused, so it is ready for the next session.
#  c1_functional/: this session's CPU-found fixes on a GPU, tiny recipe through train.py: optimizer
#    state half in pinned host memory saved at steps 2 and 4 and resumed to 6 (the checksums now read
#    host leaves into device memory), resumed again to 8 with bf16 first moments (cast from the
#    checkpoint's fp32 after verification), and bf16 masters (model.params_dtype=bfloat16) for 3 steps.
#  On an H200 only, issue 18's acceptance for this tree without a before tree (short budget):
#    a1_check/ and a2_same_call_titan/ as session 25's call a (BASE=), then Qwen3's two
#    grouped-GEMM shapes in turns (b1_bench/, as session 36's run_b.sh).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
source benchmarks/device_env.sh
O=$OUT/c1_functional; mkdir -p $O; W=/tmp/s38w
t() { (cd /tmp/pp && timeout 150 python3 train.py --config configs/tiny_moe.py --workdir $W "$@") 2>&1 \
        | grep -vE '^WARNING|bfc_allocator' >> $O/log.txt; echo "rc=$? $*" | tee -a $O/log.txt; }
t --config.optim.optimizer_cpu_offload=0.5 --config.train.train_iters=4 --config.checkpoint.save_interval=2
t --config.optim.optimizer_cpu_offload=0.5 --config.train.train_iters=6 --config.checkpoint.save_interval=2
t --config.optim.optimizer_cpu_offload=0.5 --config.train.train_iters=8 --config.checkpoint.save_interval=2 \
  --config.optim.use_precision_aware_optimizer=True --config.optim.exp_avg_dtype=bf16   # moments cast on resume
ls $W/checkpoints | tee -a $O/log.txt; rm -rf $W
t --config.model.params_dtype=bfloat16 --config.train.train_iters=3
grep -E "^step|resumed|Error|error" $O/log.txt | cut -c1-160
[ "${FUNCTIONAL_ONLY:-0}" = 1 ] && exit 0   # the device budget left for c1_functional/ only
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { nvidia-smi -L; exit 3; }
BASE= bash benchmarks/results/h200_2026-12-05_session25/run_a.sh || exit 1
tail -n 5 $OUT/a2_same_call_titan/log.txt
O=$OUT/b1_bench; mkdir -p $O
(cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3) 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $O/bench.log
tail -n 6 $O/bench.log

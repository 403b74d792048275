#!/bin/bash
# Session 39, call b (H100, JAX 0.11.2 of the device image): this session's early-stop agreement
# (moejax/train/stop.py) on the image's JAX: two CPU processes of 4 devices, SIGTERM to process 1
# only, both must stop after the same step and save it; then exit_interval on the GPU.
set -u -o pipefail
source benchmarks/device_env.sh
O=$OUT/b1_stop; mkdir -p $O; W=/tmp/s39mp; rm -rf $W
T="--config configs/tiny_moe.py --config.train.train_iters=2000 --config.checkpoint.save_interval=2000 --config.train.log_interval=1 --config.model.num_layers=1 --config.model.hidden_size=32 --config.moe.ffn_hidden_size=32 --config.model.ffn_hidden_size=64 --config.train.seq_length=16 --config.train.global_batch_size=8 --config.train.micro_batch_size=1 --config.parallel.ep=2 --config.logging.tensorboard=False"
cd /tmp/pp
for i in 0 1; do JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=4 timeout 150 python3 train.py $T --workdir $W --coordinator_address=localhost:23456 --num_processes=2 --process_id=$i > $O/p$i.log 2>&1 & eval "P$i=$!"; done
for k in $(seq 1 100); do sleep 1; [ -f $W/metrics.jsonl ] && [ $(wc -l < $W/metrics.jsonl) -ge 5 ] && break; done
kill -TERM $P1; wait $P0; echo "p0 rc=$?"; wait $P1; echo "p1 rc=$?"
grep -h "stopping" $O/p0.log $O/p1.log; ls $W/checkpoints
timeout 120 python3 train.py --config configs/tiny_moe.py --workdir /tmp/s39ei --config.train.exit_interval=3 2>&1 | grep -E "^step|stopping" | tee $O/exit_interval.log
python3 -c "import jax; print(jax.__version__, jax.devices())"

#!/bin/bash
# One GPU: profile two steps of each whole-step proxy with XLA command buffers off (so every kernel
# names its HLO instruction) and print benchmarks/profile_breakdown.py's table; the compiled HLO of
# each step (gzipped) and the breakdown with the TOP (25) longest instructions go to $OUT. Command
# buffers change the timing a little; step times come from benchmarks/train_step.py without this flag.
set -u
source "$(dirname "$0")/device_env.sh"
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
for p in ${PROXIES:-qwen3_30b_width mixtral_width}; do
  (cd /tmp/pp && XLA_FLAGS="--xla_gpu_enable_command_buffer= ${XLA_FLAGS:-}" timeout 150 python3 benchmarks/train_step.py \
    --config "configs/proxies/$p.py" --steps 4 --warmup 2 --tag "$p-nocmdbuf" --profile "/tmp/prof_$p" "$@") 2>&1 | tail -3
  gzip -c "/tmp/prof_$p/step.hlo.txt" > "$OUTDIR/$p.hlo.txt.gz"
  echo "== breakdown: $p (ms/step, command buffers off)"
  (cd /tmp/pp && python3 benchmarks/profile_breakdown.py "/tmp/prof_$p" --top "${TOP:-25}") 2>&1 \
    > "$OUTDIR/$p.breakdown.txt"
  head -14 "$OUTDIR/$p.breakdown.txt"
done

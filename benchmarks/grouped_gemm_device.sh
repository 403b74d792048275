#!/bin/bash
# Device run: make moejax.kernels importable (kernels/ maps to moejax.kernels), check the
# kernels on small shapes, then benchmark and/or autotune.
#   bash benchmarks/grouped_gemm_device.sh [bench|tune|tune+bench] [extra benchmark args]
# Steps run in the order given (tune+bench: tune writes tiles.json, bench then uses it).
# Logs and the tuned tiles.json go to $OUT (or /tmp/out).
set -o pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
source "$R/benchmarks/device_env.sh"   # carried wheels, the package in /tmp/pp on PYTHONPATH
cd /tmp
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
MODE=${1:-bench}; shift; BENCH_ARGS=("$@")
timeout 240 python3 "$R/benchmarks/grouped_gemm.py" --check-only 2>&1 | grep -vE "^WARNING|bfc_allocator" || exit 1
for step in ${MODE//+/ }; do
  if [ "$step" = tune ]; then
    # (m, experts, k, n) of fc1 (H -> 2F) and fc2 (F -> H): Qwen3-30B-A3B, DeepSeek-V3 EP32,
    # Mixtral; TUNE_SHAPES="m e k n;..." tunes only those; TUNE_ALPHA=100 on near-equal groups.
    ALL="65536 128 768 2048;65536 128 2048 1536;32768 8 2048 7168;32768 8 7168 4096;32768 8 14336 4096;32768 8 4096 28672"
    IFS=';' read -ra SHAPES <<< "${TUNE_SHAPES:-$ALL}"
    for s in "${SHAPES[@]}"; do
      set -- $s
      timeout ${TUNE_TIMEOUT:-100} python3 -m moejax.kernels.grouped_gemm.autotune --m $1 --e $2 --k $3 --n $4 --quick --alpha ${TUNE_ALPHA:-1} 2>&1 \
        | tee -a "$OUTDIR/tune.log" | grep -E "BEST|failed|wrong" | grep -v "shared memory"
    done
    cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json "$OUTDIR/tiles.json"
  elif [ "$step" = bench ]; then
    timeout ${BENCH_TIMEOUT:-330} python3 "$R/benchmarks/grouped_gemm.py" --skip-check "${BENCH_ARGS[@]}" 2>&1 | tee "$OUTDIR/bench.log" | grep -vE "^WARNING|bfc_allocator|^\{"
  fi
done

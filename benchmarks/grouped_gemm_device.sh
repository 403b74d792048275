#!/bin/bash
# Device run: make moejax.kernels importable (kernels/ maps to moejax.kernels),
# optionally autotune shapes, then run the grouped GEMM benchmark.
#   bash benchmarks/grouped_gemm_device.sh [tune]
export PYTHONUNBUFFERED=1
R=$(cd "$(dirname "$0")/.." && pwd)
rm -rf /tmp/pp && mkdir -p /tmp/pp && cp -r "$R/moejax" /tmp/pp/ && cp -r "$R/kernels" /tmp/pp/moejax/kernels
export PYTHONPATH=/tmp/pp
cd /tmp
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
if [ "$1" = "tune" ]; then
  for s in "32768 8 4096 28672" "32768 8 14336 4096" "65536 128 768 2048" "32768 8 7168 4096" "32768 8 2048 7168"; do
    set -- $s
    timeout 100 python3 -m moejax.kernels.grouped_gemm.autotune --m $1 --e $2 --k $3 --n $4 --quick 2>&1 | grep -E "BEST|failed|wrong|wrote" | grep -v "shared memory"
  done
  cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json "$OUTDIR/tiles.json"
fi
timeout ${BENCH_TIMEOUT:-330} python3 "$R/benchmarks/grouped_gemm.py" 2>&1 | tee "$OUTDIR/bench.log" | grep -vE "^WARNING|bfc_allocator"

#!/bin/bash
# Session 12, call a (c1_half_tiles/): grouped GEMM with half tiles (a group's last tile of at most
# 64 rows runs as a 64-row tile, the consumers splitting its columns). The kernel check on small
# shapes, then Qwen3 and Mixtral shapes with this tree (with torch._grouped_mm and the equal-groups
# einsum; `pallas_eq`: ours on equal groups), then Qwen3 with the tree before (.peers/base, HEAD
# 00fe3f5), same benchmark script, same call.
set -u
O=$OUT/c1; mkdir -p $O
OUT=$O BENCH_TIMEOUT=300 bash benchmarks/grouped_gemm_device.sh bench --shapes qwen3,mixtral --skip-xla
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL .peers/base/{moejax,configs,train.py,benchmarks} /tmp/base/
(cd /tmp && PYTHONPATH=/tmp/base:/tmp/site timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check \
  --shapes qwen3 --skip-xla --no-torch) 2>&1 | grep -vE "^WARNING|bfc_allocator|^\{" | tee $O/bench_base.log

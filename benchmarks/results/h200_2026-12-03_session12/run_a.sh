#!/bin/bash
# Ran on commit 588665d (the half-tile kernel, later dropped: `git show 588665d:kernels/grouped_gemm/mosaic.py`).
# Session 12, call a (c1_half_tiles/): grouped GEMM with half tiles (a group's last tile of at most
# 64 rows runs as a 64-row tile, the consumers splitting its columns) and alternating epilogues
# (the two consumers store their tiles in turns). (1) the kernel check on small shapes; (2) each
# kernel call of Qwen3 and Mixtral with the tuned tile, consumers storing in turns and not
# (alternate_epilogues=0), Dirichlet(1) groups as the benchmark's; (3) Qwen3's shapes with this
# tree (torch._grouped_mm, the equal-groups einsum, `pallas_eq`: ours on equal groups), then with
# the tree before (.peers/base, HEAD 00fe3f5), same benchmark script, same call.
set -u
O=$OUT/c1; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "^WARNING|bfc_allocator" | tee $O/check.log
for s in qwen3 mixtral; do
  timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape $s --orient fc1,fc2 --op fwd,dgrad,wgrad \
    --sweep "tuned alternate_epilogues=0" 2>&1 | grep -vE "^WARNING|bfc_allocator" | tee -a $O/sweep.log
done
timeout 170 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "^WARNING|bfc_allocator|^\{" | tee $O/bench.log
cd - >/dev/null; rm -rf /tmp/base && mkdir -p /tmp/base
cp -rL .peers/base/{moejax,configs,train.py,benchmarks} /tmp/base/
(cd /tmp && PYTHONPATH=/tmp/base:/tmp/site timeout 120 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check \
  --shapes qwen3 --skip-xla --no-torch) 2>&1 | grep -vE "^WARNING|bfc_allocator|^\{" | tee $O/bench_base.log

#!/bin/bash
# Ran on commit 142b223 (the script itself committed after).
# Session 13, call d (d1_ncu/): why the einsum does more work per joule on Qwen3's shapes. ncu (clocks
# as in use) on fc1's and fc2's forward, Dirichlet(1) groups: our shared 128x256 tile, our ping-pong
# 128x128 tiles (the table's), and the batched einsum on equal groups (cuBLAS); kernel name, launch
# (cluster size), SM clock, tensor pipe, L2 and DRAM traffic.
set -u -o pipefail
O=$OUT/d1_ncu; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
one() {  # NAME KERNEL_REGEX ORIENT SWEEP
  timeout 90 ncu --clock-control none -k "regex:$2" -c 1 --section SpeedOfLight --section LaunchStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --metrics lts__t_bytes.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__inst_executed_pipe_tensor_op_gmma.sum \
    python3 $P --shape qwen3 --orient $3 --op fwd --sweep "$4" --min-time 0.01 > $O/$1.txt 2>&1
  echo "== $1"; grep -E '^  [a-zA-Z_]+.*\(|Duration|SM Frequency|DRAM Throughput|L2 Cache Throughput|Hit Rate|Cluster Size|Grid Size|Registers|Pipe|lts__t_bytes|dram__bytes|gmma|Compute \(SM\)' $O/$1.txt | head -30
}
one fc1_shared body fc1 "256,4,4,1,pingpong=0"
one fc1_pingpong body fc1 tuned
one fc1_einsum "gemm|xmma|cutlass|nvjet" fc1 einsum
one fc2_shared body fc2 "256,4,16,1,pingpong=0"
one fc2_pingpong body fc2 tuned
one fc2_einsum "gemm|xmma|cutlass|nvjet" fc2 einsum

#!/bin/bash
# Ran on commit 613d099 (as calls a and b).
# Session 17, call c (c1_ncu_m256/): why the 256-row tile runs slower at a higher clock and lower power
# (stall-bound, not power-bound; call b). ncu (clocks as in use) on Qwen3 fc2's forward (Dirichlet(1)
# groups) and Mixtral fc2's forward: the table's tile against 256-row tiles in 2-CTA clusters; speed of
# light, warp states (stall reasons), tensor pipe, L2 traffic.
set -u -o pipefail
O=$OUT/c1_ncu_m256; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
M="tile_n=128,stages=4,tile_m=256,pingpong=0,cluster=2,half_tiles=0"
one() {  # NAME SHAPE SWEEP
  timeout 100 ncu --clock-control none -k "regex:body" -c 1 --section SpeedOfLight --section LaunchStats \
    --section WarpStateStats --section SchedulerStats --section Occupancy \
    --metrics lts__t_bytes.sum,sm__inst_executed_pipe_tensor_op_gmma.sum,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active \
    python3 $P --shape $2 --orient fc2 --op fwd --sweep "$3" --min-time 0.01 > $O/$1.txt 2>&1
  echo "== $1"; grep -E 'Duration|SM Frequency|Cluster Size|Registers|Stall|Warp Cycles|Issued Warp|No Eligible|Active Warps|lts__t_bytes|gmma|Compute \(SM\)|Memory Throughput' $O/$1.txt | head -40
}
one qwen3_fc2_tuned qwen3 tuned
one qwen3_fc2_m256 qwen3 "$M"
one mixtral_fc2_tuned mixtral tuned
one mixtral_fc2_m256 mixtral "$M"

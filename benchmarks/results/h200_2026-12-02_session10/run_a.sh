#!/bin/bash
# Session 10, call a: where the Mixtral expert GEMMs lose time. Each kernel call timed with and
# without its epilogue stores (near-equal groups, as in a step), then ncu's speed-of-light,
# compute and memory sections for fc1's three calls.
# Ran with benchmarks/grouped_gemm_profile.py as of f48edac. Its --no-store variant was removed after this
# call: with the stores left out the compiler dropped the MMAs as well (up to 1319 TFLOP/s, above the
# 989 peak), so those rows measure nothing; the ncu sections below are the reading of this call.
source benchmarks/device_env.sh
cd /tmp
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
python3 $P --shape mixtral --orient fc1,fc2 --op fwd,dgrad,wgrad --alpha 100 --sweep tuned --no-store 2>&1 \
  | grep -vE "^WARNING|bfc_allocator" | tee $OUT/nostore.txt
for op in fwd dgrad wgrad; do
  timeout 150 ncu --clock-control none -k regex:body -c 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis python3 $P --shape mixtral --orient fc1 --op $op --alpha 100 > $OUT/ncu_fc1_$op.txt 2>&1
  grep -E "Duration|Throughput|Pipe|Busy|Hit Rate|Executed Ipc|Issue Slots" $OUT/ncu_fc1_$op.txt | head -30
done

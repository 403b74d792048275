#!/bin/bash
# Session 11, call a (c1_sustained_tiles/): are Mixtral's expert GEMMs slowed by their DRAM traffic
# under the H200's power limit? (1) every tile order of Mixtral's six kernel calls timed in
# sustained 0.6 s bursts (the autotuner's are 0.05 s, before the clock drops) with the SM clock
# and board power sampled, near-equal groups; the fastest of each written into a copy of this
# tree's tiles.json (/tmp/tw); (2) the Mixtral step: this tree, the copy with those tiles, this
# tree again; (3) a profile of this tree's Mixtral step (none since the SwiGLU kernel).
set -u
source benchmarks/device_env.sh
O=$OUT/c1; mkdir -p $O
rm -rf /tmp/tw /tmp/cur0 && mkdir -p /tmp/tw /tmp/cur0
cp -rL moejax configs train.py benchmarks /tmp/tw/ && cp -rL moejax configs train.py benchmarks /tmp/cur0/
V="256,4,4,1 256,4,8,1 256,4,16,1 256,4,4,0 256,4,8,0 256,4,16,0"
(cd /tmp/tw && PYTHONPATH=/tmp/tw:/tmp/site python3 benchmarks/grouped_gemm_profile.py --shape mixtral \
  --orient fc1,fc2 --op fwd,dgrad,wgrad --alpha 100 --sweep "$V" --min-time 0.6 --clocks --write-best) 2>&1 \
  | grep -v -i warning | tee $O/sweep.txt
cp /tmp/tw/moejax/kernels/grouped_gemm/tiles.json $O/tiles_sustained.json
TINY=0 TITAN=none PROXIES=mixtral_width BASE="/tmp/cur0 /tmp/tw" OUT=$O bash benchmarks/proxies_vs_titan.sh
PROXIES=mixtral_width TOP=60 OUT=$O/prof bash benchmarks/profile_proxies.sh

#!/bin/bash
# Session 11, call b (c2_swiglu_packed/): the SwiGLU backward kernel reading and writing bf16
# (gate, up) pairs as uint32 words: (1) benchmarks/swiglu.py, XLA's passes against the kernel at
# several block sizes; (2) the Mixtral step, c47a813 (.peers/t1: sustained tiles, strided kernel)
# then this tree.
set -u
source benchmarks/device_env.sh
O=$OUT/c2; mkdir -p $O
(cd /tmp/pp && python3 benchmarks/swiglu.py --sweep "2048,4 1024,4 2048,8 4096,8 1024,2") 2>&1 | grep -v -i warning | tee $O/swiglu.txt
TINY=0 TITAN=none PROXIES=mixtral_width BASE=.peers/t1 OUT=$O bash benchmarks/proxies_vs_titan.sh

#!/bin/bash
# Session 11, call c (c3_same_call_titan/): the acceptance measurement with this session's changes
# (Mixtral tiles tuned on sustained bursts, the packed SwiGLU kernel, the compute copy kept in the
# train state) against session 10's HEAD 1a05e15 (.peers/s10), torchtitan, and the tiny recipe's
# bf16 loss in both trees, in one call.
BASE=.peers/s10 OUT=$OUT/c3 bash benchmarks/proxies_vs_titan.sh

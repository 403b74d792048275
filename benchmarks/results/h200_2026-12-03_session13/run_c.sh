#!/bin/bash
# Ran on commit 142b223 (ping-pong tiles in tiles.json for Qwen3's fc1/fc2 forward and fc2 dgrad).
# Session 13, call c (c1_same_call_titan/): the acceptance measurement in one call: both proxies from
# the tree before this session (.peers/base, HEAD 5f1e889) and this tree, torchtitan's proxies, and
# the tiny recipe's bf16 loss in both trees.
BASE=.peers/base OUT=$OUT/c1_same_call_titan bash benchmarks/proxies_vs_titan.sh

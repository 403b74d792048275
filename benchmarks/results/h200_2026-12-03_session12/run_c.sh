#!/bin/bash
# Ran on commit 79d687e (this kernel state is the one kept).
# Session 12, call c (c3_same_call_titan/): the paired half tiles measured no gain (call b) and were
# dropped; what is kept is the consumers storing their tiles in turns (alternate_epilogues, on by
# default). The acceptance measurement in one call: both proxies from the tree before (.peers/base,
# HEAD 00fe3f5) and this tree, torchtitan's proxies, and the tiny recipe's bf16 loss in both trees.
BASE=.peers/base OUT=$OUT/c3 bash benchmarks/proxies_vs_titan.sh

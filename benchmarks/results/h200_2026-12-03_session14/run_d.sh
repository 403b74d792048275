#!/bin/bash
# Ran on commit 07c3ec7 (this session's kernels and tiles). Session 14, call d (d1_same_call_titan/): the
# acceptance measurement in one call: both proxies from the tree before this session (.peers/base,
# HEAD 250f582) and this tree, torchtitan's proxies, and the tiny recipe's bf16 loss in both trees.
BASE=.peers/base OUT=$OUT/d1_same_call_titan bash benchmarks/proxies_vs_titan.sh

#!/bin/bash
# Ran on commit a06d1d3 (this session's tiles: half tiles, wgrad deal). Session 16, call d
# (d1_same_call_titan/): the acceptance measurement in one call: both proxies from the tree at the
# session's start (.peers/base = 79933a0) and this tree, torchtitan's proxies, and the tiny recipe's
# bf16 loss in both trees.
BASE=.peers/base OUT=$OUT/d1_same_call_titan bash benchmarks/proxies_vs_titan.sh

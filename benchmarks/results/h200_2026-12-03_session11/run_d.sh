#!/bin/bash
# Session 11, call d (c4_same_call_titan/): the acceptance measurement again (this tree and
# torchtitan, same call), then a profile of this tree's Mixtral step.
OUT=$OUT/c4 bash benchmarks/proxies_vs_titan.sh
PROXIES=mixtral_width TOP=60 OUT=$OUT/c4/prof bash benchmarks/profile_proxies.sh

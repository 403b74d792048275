# session 8, call 4 (c4_same_call_titan/): the acceptance measurement again on the committed code
# (da2b69a), both proxies and torchtitan in one call.
bash benchmarks/proxies_vs_titan.sh

# session 7, call 4: the acceptance measurement for the code kept (bf16 logits; the compute copy of
# call 3 reverted): both proxies and torchtitan in the same call.
bash benchmarks/proxies_vs_titan.sh

# session 7, call 5: as call 4 (run_u.sh), with head_logits' GEMM writing bf16 itself.
bash benchmarks/proxies_vs_titan.sh

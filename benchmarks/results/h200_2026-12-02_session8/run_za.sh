# session 8, call 5 (c5_kernel_jit_compile/): the Qwen3 proxy's compile time and step, HEAD da2b69a
# (.peers/base) against this tree (the Pallas grouped GEMM jitted in moejax/kernels/grouped_gemm/api.py,
# so the per-layer calls share one lowering), same call. Prints compile_s from ours.jsonl.
TINY=0 TITAN=none PROXIES=qwen3_30b_width BASE=.peers/base bash benchmarks/proxies_vs_titan.sh 2>&1 | tail -5; python3 -c "
import json
for l in open('$OUT/ours.jsonl'):
  r=json.loads(l); print(r['tag'], 'compile_s', round(r['compile_s'],1), 'step_ms', round(r['step_ms'],1))"

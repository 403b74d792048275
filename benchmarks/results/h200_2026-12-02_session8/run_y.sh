# session 8, call 3 (c3_chunks_and_compute_copy/; an earlier start of it was refused): step times
# only, three trees in one call. .peers/v1 = this tree (21d9d9d) with _CHUNK_ELEMENTS = 1 << 31 in
# moejax/layers/cross_entropy.py (2 cross-entropy chunks on the Qwen3 proxy instead of 4; Mixtral
# has 1 either way); .peers/v2 = 21d9d9d with commit ce9714a cherry-picked (the train state carries
# the masters' bf16 compute copy, session 7's change, reverted then). Neither tree was kept.
TINY=0 TITAN=none BASE=".peers/v1 .peers/v2" bash benchmarks/proxies_vs_titan.sh

#!/bin/bash
# Session 26, call a (a1_mixtral_micro_batches/): NOT RUN yet (no H200 could be started later in session 26); session 29's run_c.sh carries it (c1_mixtral_micro_batches/), also not run yet.
# For any tree after 253c57f; ask for an H200 (needs_h200: Mixtral
# width at two micro-batches does not fit an H100's 80 GB): session 25's call b for the Mixtral
# proxy, which ran out of memory on the H100 that call got. 4c54bb9's tree (.peers/base, before
# gradient_accumulation's grad_fn was jitted) against this one, step times only.
#   mkdir -p .peers/base && git archive 4c54bb9 moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers"]
PROXIES=mixtral_width TINY=0 TITAN=none BASE=.peers/base OUT=$OUT/a1_mixtral_micro_batches \
  bash benchmarks/proxies_vs_titan.sh --config.train.micro_batch_size=2

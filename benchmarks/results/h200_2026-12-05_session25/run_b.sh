#!/bin/bash
# Ran in session 26 on fbaccf1's tree, on an H100 (gradient_accumulation's grad_fn jitted, so
# eval_shape's trace is reused in the micro-batch scan; micro-batches cut by dynamic_index_in_dim).
# Session 25, call b (b1_grad_fn_jit/): both proxies with 2 micro-batches of 2 sequences (the
# path the change touches; the proxies' own 1 micro-batch does not reach it), from 4c54bb9's tree
# (.peers/base, before the change) and this tree, and the tiny recipe's bf16 loss (8 micro-batches a
# step) in both trees. No torchtitan.
#   mkdir -p .peers/base && git archive 4c54bb9 moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers"]
TITAN=none BASE=.peers/base OUT=$OUT/b1_grad_fn_jit bash benchmarks/proxies_vs_titan.sh \
  --config.train.micro_batch_size=2

#!/bin/bash
# Session 10, call f: call e again with the kernel's outputs typed for the MoE layer's shard_map
# (kernels/vma.py out_struct; call e failed there): the weighted SwiGLU backward kernel against
# f48edac (.peers/cur), torchtitan and the tiny bf16 loss of both trees in the same call.
BASE=.peers/cur bash benchmarks/proxies_vs_titan.sh

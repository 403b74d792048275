#!/bin/bash
# Session 10, call e: the weighted SwiGLU backward as one Pallas Triton kernel (kernels/swiglu.py)
# against commit f48edac (.peers/cur: the cross-entropy kernel, XLA's swiglu backward), with
# torchtitan and the tiny bf16 loss of both trees in the same call: issue 18's acceptance run.
BASE=.peers/cur bash benchmarks/proxies_vs_titan.sh

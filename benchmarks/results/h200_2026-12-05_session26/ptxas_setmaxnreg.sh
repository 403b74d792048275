#!/bin/bash
# Session 26, on the CPU machine (nvcc/ptxas of CUDA 13.0, no GPU needed): does ptxas give a
# consumer warpgroup more than the launch's 168 registers per thread after `setmaxnreg.inc 232`
# (3 warpgroups of 128 threads: 65536 / 384 = 170, rounded down to 168)? A kernel whose consumer
# branch keeps N fp32 values live across a loop, compiled for sm_90a with and without the
# setmaxnreg pair (producer 40, consumers 232, as kernels/grouped_gemm/mosaic.py sets them), and with
# an explicit .maxnreg 168 in place of the launch bounds; ptxas's
# spill counts tell whether the branch got the registers. Output: ptxas_setmaxnreg.txt.
set -u
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
for n in 120 160 200 224; do
  for mode in setmaxnreg setmaxnreg+maxnreg168 none; do
    bounds='__launch_bounds__(384, 1)'; [ $mode = setmaxnreg+maxnreg168 ] && bounds='__maxnreg__(168)'  # .maxnreg, as a cap
    if [ $mode != none ]; then dec='asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");'
      inc='asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");'; else dec=''; inc=''; fi
    cat > "$d/k.cu" <<CU
__global__ void $bounds k(float* out, const float* in, int iters) {
  if (threadIdx.x / 128 == 0) {
    $dec
    out[threadIdx.x] = in[threadIdx.x];
  } else {
    $inc
    float acc[$n];
#pragma unroll
    for (int i = 0; i < $n; ++i) acc[i] = in[threadIdx.x + i * 384];
    for (int it = 0; it < iters; ++it) {
#pragma unroll
      for (int i = 0; i < $n; ++i) acc[i] = acc[i] * acc[(i + 7) % $n] + 1.f;
    }
#pragma unroll
    for (int i = 0; i < $n; ++i) out[threadIdx.x + i * 384] = acc[i];
  }
}
CU
    spill=$(nvcc -gencode arch=compute_90a,code=sm_90a -c -Xptxas -v "$d/k.cu" -o "$d/k.o" 2>&1 | grep -o "[0-9]* bytes spill stores")
    echo "N=$n live fp32 values, $mode: $spill"
  done
done
nvcc --version | tail -2

#!/bin/bash
# Session 33, call b: the six grouped-GEMM shapes, ours against tokamax's ragged_dot (Google's
# Pallas Mosaic GPU kernels, its default heuristic config: never timed here before), torch's
# _grouped_mm and the equal-groups einsum, in turns (3 x 0.5 s, medians).
#   .whl-tk: tokamax and the wheels it imports that the image lacks, fetched here with
#     echo /.whl-tk/ >> .git/info/exclude
#     for w in tokamax==0.0.17 einshape==1.0 jaxtyping==0.3.11 wadler-lindig==0.1.8 qwix==0.1.8 \
#         immutabledict==4.3.1 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 \
#         annotated-types==0.8.0 xprof==2.24.2 fire==0.7.1 termcolor==3.3.0 six==1.17.0; do
#       python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl-tk $w; done
#   carry [".whl", ".whl-tk"]
set -u -o pipefail
source benchmarks/device_env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-tk .whl-tk/*.whl
mkdir -p $OUT/b1_bench
cd /tmp && PYTHONPATH=/tmp/pp:/tmp/site:/tmp/site-tk timeout 560 python3 /tmp/pp/benchmarks/grouped_gemm.py \
  --skip-check --skip-xla 2>&1 | grep -vE '^WARNING|bfc_allocator' > $OUT/b1_bench/bench.log
tail -n 9 $OUT/b1_bench/bench.log

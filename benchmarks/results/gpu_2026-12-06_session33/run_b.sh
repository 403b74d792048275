#!/bin/bash
# Session 33, call b: the six grouped-GEMM shapes, ours against tokamax's ragged_dot (Google's
# Pallas Mosaic GPU kernels, its default heuristic config: never timed here before), torch's
# _grouped_mm and the equal-groups einsum, in turns (3 x 0.5 s, medians).
#   .whl-tk: tokamax 0.0.17 and the wheels it imports that the image lacks (einshape, jaxtyping,
#   wadler_lindig, qwix, immutabledict, pydantic, pydantic_core, typing_inspection,
#   annotated_types, xprof, fire, termcolor, six); carry [".whl", ".whl-tk"]
set -u -o pipefail
source benchmarks/device_env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-tk .whl-tk/*.whl
mkdir -p $OUT/b1_bench
cd /tmp && PYTHONPATH=/tmp/pp:/tmp/site:/tmp/site-tk timeout 560 python3 /tmp/pp/benchmarks/grouped_gemm.py \
  --skip-check --skip-xla 2>&1 | grep -vE '^WARNING|bfc_allocator' > $OUT/b1_bench/bench.log
tail -n 9 $OUT/b1_bench/bench.log

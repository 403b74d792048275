# Source this on a device machine: installs carried wheels from .whl/ (packages the
# device image lacks: ml_collections, grain, tensorboardX, ...) and puts a copy of
# the package on PYTHONPATH with kernels/ as moejax.kernels (the repo's own
# moejax/ directory would otherwise shadow the install's mapping).
R=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
if ls "$R"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$R"/.whl/*.whl
fi
rm -rf /tmp/pp && mkdir -p /tmp/pp
cp -rL "$R/moejax" "$R/configs" "$R/train.py" "$R/benchmarks" /tmp/pp/   # -L: moejax/kernels -> kernels/
export PYTHONPATH=/tmp/pp:/tmp/site

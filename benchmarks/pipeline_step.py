"""Pipeline parallelism on several GPUs: the whole train step of pp=2 × ep=2 (and with vpp=2)
against ep=2 without pp, on 4 GPUs of one host.

  python benchmarks/pipeline_step.py [--config configs/proxies/qwen3_30b_width.py] [--gpus 4]
      [--layers 8] [--batch 16] [--steps 10]

NOT RUN YET: it needs a host with 4 GPUs (the issue's pp=2 × ep=2 GPU run belongs to a later issue
on a multi-GPU machine; our device machine had one H200). Each layout runs
benchmarks/train_step.py (the train.py step path: distributed optimizer, the config's pipeline
schedule) in its own process with `--config.model.num_layers=LAYERS` and the same BATCH sequences
per step, one per micro-batch and dp rank (m = BATCH/dp micro-batches); the table gives step time,
tokens/s, TFLOP/s and MFU per GPU, peak memory of GPU 0, compile time and the schedule's bubble
fraction ((pp−1)/(m·vpp), moejax/parallel/pipeline.py). The layouts see the same tokens, in micro-batches of
dp sequences, so the aux loss (per micro-batch) and bf16 rounding make their losses agree to
about 1e-2, not exactly (fp32 equality at equal micro-batches is tested on CPU:
tests/train/test_pipeline.py). Smoke-tested on 4 CPU devices with
`--config configs/tiny_moe.py --layers 4 --batch 8 --steps 1` (JAX_NUM_CPU_DEVICES=4).

On the device machine: `source benchmarks/device_env.sh && python benchmarks/pipeline_step.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from moejax.parallel.pipeline import make_schedule

HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUTS = {  # name: (overrides, pp, vpp)
    "ep2 (no pp)": (["--config.parallel.ep=2"], 1, 1),
    "pp2 x ep2": (["--config.parallel.pp=2", "--config.parallel.ep=2"], 2, 1),
    "pp2 x vpp2 x ep2": (["--config.parallel.pp=2", "--config.parallel.vpp=2", "--config.parallel.ep=2"], 2, 2),
}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(HERE, "..", "configs", "proxies", "qwen3_30b_width.py"))
  ap.add_argument("--gpus", type=int, default=4)
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--batch", type=int, default=16, help="sequences per step (a multiple of the gpus)")
  ap.add_argument("--steps", type=int, default=10)
  args = ap.parse_args()
  rows = []
  for name, (overrides, pp, vpp) in LAYOUTS.items():
    dp = args.gpus // pp
    out = os.path.join(tempfile.mkdtemp(), "result.json")
    cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--config", args.config, "--out", out,
           "--tag", name, "--steps", str(args.steps), f"--config.model.num_layers={args.layers}",
           "--config.train.micro_batch_size=1", f"--config.train.global_batch_size={args.batch}", *overrides]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(args.gpus)))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
      print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
      continue
    with open(out) as f:
      r = json.loads(f.readline())
    r["bubble"] = make_schedule(pp, vpp, args.batch // dp).bubble_fraction if pp > 1 else 0.0
    rows.append(r)
  print(f"\n{'layout':18} {'step ms':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8} {'compile s':>9} "
        f"{'bubble':>7} {'loss':>7}")
  for r in rows:
    print(f"{r['tag']:18} {r['step_ms']:8.1f} {r['tokens_per_s']:9.0f} {r['tflops_per_device']:8.1f} "
          f"{100 * r['mfu']:5.1f}% {r['peak_gib']:8.1f} {r['compile_s']:9.1f} {r['bubble']:7.3f} {r['loss']:7.3f}")


if __name__ == "__main__":
  main()

"""Session 20, call d: which part of the swap_all tile makes ptxas serialize its wgmmas ("insufficient
register resources for the wgmma pipeline", call c)? Rewrites the device's copy of mosaic.py
(/tmp/pp) per variant, then compiles and times Qwen3 fc1's forward (the table's tile against swap_all
in clusters, in turns) with ptxas's report dumped; restores the file at the end.

  python3 ptxas_variants.py OUT_DIR
"""
import os
import subprocess
import sys

PATH = "/tmp/pp/moejax/kernels/grouped_gemm/mosaic.py"
ORIG = open(PATH).read()
T = "tile_n=128,pingpong=0,stages=4,swap_all=1"
VARIANTS = {
    "as_built": [],
    "forms_64_grain": [("TALL_ROWS = tuple(range(32, 2 * BLOCK + 1, 32))",
                        "TALL_ROWS = tuple(range(64, 2 * BLOCK + 1, 64))")],
    "one_form_256": [("TALL_ROWS = tuple(range(32, 2 * BLOCK + 1, 32))", "TALL_ROWS = (2 * BLOCK,)")],
    # wrong results (partial chunks not stored): only whether the register round trip is the cause
    "no_reload": [("        unswizzled[...] = plgpu.load(staged, layout=plgpu.Layout.WGMMA)\n", "")],
    "convert_per_chunk": [("  acc = acc_ref[...].astype(out_dtype)\n  cols, r = acc.shape\n  assert swizzled",
                           "  acc = acc_ref[...]\n  cols, r = acc.shape\n  assert swizzled"),
                          ("      part = acc[j * ROWS:(j + 1) * ROWS, h * ROWS:h * ROWS + rr]\n",
                           "      part = acc[j * ROWS:(j + 1) * ROWS, h * ROWS:h * ROWS + rr].astype(out_dtype)\n")],
}
out = sys.argv[1]
try:
  for name, subs in VARIANTS.items():
    src = ORIG
    for a, b in subs:
      assert src.count(a) == 1, (name, a)
      src = src.replace(a, b)
    open(PATH, "w").write(src)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    env = dict(os.environ, MOSAIC_GPU_DUMP_PTXAS="1", MOSAIC_GPU_DUMP_TO=d)
    r = subprocess.run([sys.executable, "/tmp/pp/benchmarks/grouped_gemm_profile.py", "--shape", "qwen3",
                        "--orient", "fc1", "--op", "fwd", "--min-time", "0.3", "--repeat", "2",
                        "--sweep", f"tuned {T},cluster=2"], env=env, capture_output=True, text=True, timeout=150)
    med = [l for l in r.stdout.splitlines() if l.startswith("median")]
    rep = []
    for f in sorted(os.listdir(d)):
      if f.endswith(".ptxas"):
        txt = open(os.path.join(d, f)).read()
        rep.append(f"{f}: serialized={'serialized' in txt} spill={'spilled' in txt}")
      else:
        os.remove(os.path.join(d, f))
    print(f"== {name}: " + "; ".join(rep), *med, r.stderr[-300:] if r.returncode else "", sep="\n  ", flush=True)
finally:
  open(PATH, "w").write(ORIG)

"""Data loader throughput: Megatron .bin/.idx -> GPTDataset -> Grain global batches, on CPU.

Compares the tokens/s the loader delivers on this machine with what an 8-GPU Mixtral-8x7B step
consumes (model FLOPs/token from configs/mixtral_8x7b.py at a target 468 TFLOP/s per GPU).

    .venv/bin/python benchmarks/data_loader.py [--tokens 64e6] [--steps 60] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from moejax.data.indexed import IndexedDatasetBuilder  # noqa: E402


def mixtral_train_flops_per_token(seq: int = 4096) -> float:
    """fwd+bwd model FLOPs per token of Mixtral 8x7B: 6 x active matmul params + causal attention."""
    L, H, F, V, N, K, D, topk, E = 32, 4096, 14336, 32000, 32, 8, 128, 2, 8
    attn_proj = 2 * H * D * (2 * N + 2 * K)          # q, o (N heads) and k, v (K groups)
    attn_scores = 2 * 2 * N * D * seq * 0.5          # QK^T and PV, causal half
    experts = topk * 2 * 3 * H * F                  # gated MLP of the top-2 experts
    router = 2 * H * E
    fwd = L * (attn_proj + attn_scores + experts + router) + 2 * H * V  # + LM head
    return 3.0 * fwd


def make_corpus(prefix: str, num_tokens: int, vocab: int = 32000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    done = 0
    while done < num_tokens:
        lengths = np.clip(rng.lognormal(7.0, 1.0, 1024).astype(np.int64), 16, 32768)
        toks = rng.integers(0, vocab, int(lengths.sum()), dtype=np.uint16)
        off = 0
        for n in lengths:
            b.add_item(toks[off:off + n])
            b.end_document()
            off += n
        done += int(lengths.sum())
    b.finalize(prefix + ".idx")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=float, default=64e6, help="corpus size in tokens")
    ap.add_argument("--seq-length", type=int, default=4096)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2, help="Grain read threads")
    ap.add_argument("--tflops-per-gpu", type=float, default=468.0)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    import grain


    work = a.workdir or tempfile.mkdtemp(prefix="moejax_loader_bench_")
    os.makedirs(work, exist_ok=True)
    prefix = os.path.join(work, "corpus")
    if not os.path.exists(prefix + ".idx"):
        t0 = time.perf_counter()
        make_corpus(prefix, int(a.tokens))
        print(f"wrote corpus {prefix} ({a.tokens:.3g} tokens) in {time.perf_counter() - t0:.1f}s")
    seq, gbs = a.seq_length, a.global_batch
    # The Mixtral recipe reading this corpus (a 50/50 blend of it with itself, to include the
    # blending layer) exactly as train.py does: make_dataset(cfg, 8 devices)[step].
    import importlib.util
    spec = importlib.util.spec_from_file_location("recipe", os.path.join(REPO, "configs", "mixtral_8x7b.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg = recipe.get_config()
    cfg.data.update(source="indexed", path=("0.5", prefix, "0.5", prefix), split="98,1,1",
                    cache_dir=os.path.join(work, "cache"))
    cfg.train.update(train_iters=3 * a.steps, global_batch_size=gbs, seq_length=seq)
    from moejax.train.validate import validate
    from moejax.data.loader import make_dataset
    validate(cfg, a.gpus)
    t0 = time.perf_counter()
    ds = make_dataset(cfg, a.gpus)
    t_index = time.perf_counter() - t0
    print(f"built GPT + blended sample indices ({len(ds)} steps x {gbs} samples) in {t_index:.2f}s")
    results = {}

    def evict_page_cache():
        """Drop the corpus from the OS page cache so reads really go to disk (cold start)."""
        with open(prefix + ".bin", "rb+") as f:
            os.fsync(f.fileno())                      # dirty pages cannot be dropped
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    # 1) cold page cache, synchronous, as the train loop calls it: batch = dataset[step]
    evict_page_cache()
    t0 = time.perf_counter()
    for s in range(a.steps):
        batch = ds[s]
    results["dataset[step], cold page cache"] = a.steps * gbs * seq / (time.perf_counter() - t0)
    assert batch.shape == (gbs // a.gpus, a.gpus, seq + 1), batch.shape
    # 2) warm page cache, other steps
    t0 = time.perf_counter()
    for s in range(a.steps, 2 * a.steps):
        batch = ds[s]
    results["dataset[step], warm page cache"] = a.steps * gbs * seq / (time.perf_counter() - t0)
    # 3) Grain iterator with read threads and prefetch (its state is resumable)
    evict_page_cache()
    it = iter(ds[2 * a.steps:3 * a.steps].to_iter_dataset(
        grain.ReadOptions(num_threads=a.threads, prefetch_buffer_size=8)))
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    results[f"Grain iterator, {a.threads} threads, cold"] = n * gbs * seq / (time.perf_counter() - t0)

    need = a.gpus * a.tflops_per_gpu * 1e12 / mixtral_train_flops_per_token(seq)
    from moejax.config import model_spec
    from moejax.metrics.flops import train_flops_per_token
    assert abs(train_flops_per_token(model_spec(cfg), seq) / mixtral_train_flops_per_token(seq) - 1) < 1e-9
    print(f"Mixtral 8x7B train FLOPs/token (seq {seq}): {mixtral_train_flops_per_token(seq) / 1e9:.1f} GFLOP")
    print(f"{a.gpus} GPUs x {a.tflops_per_gpu:.0f} TFLOP/s consume {need:,.0f} tokens/s; 5x = {5 * need:,.0f}")
    for k, v in results.items():
        print(f"loader [{k}]: {v:,.0f} tokens/s = {v / need:.1f}x the requirement")
    print(f"cpu cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()

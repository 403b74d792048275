"""Run inside the megatron-core peer venv: build Megatron's GPT/Blended datasets and dump them.

Usage: python megatron_peer_gpt.py SPEC.json OUT.npz  (called by test_gpt_dataset.py/test_blend.py)
"""
import json
import sys

import numpy

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import get_blend_from_list


class Tok:  # the only tokenizer attributes GPTDataset reads
    def __init__(self, eod):
        self.eod = eod
        self.vocab_size = None
        self.unique_identifiers = {"class": "Tok", "eod": eod}


spec = json.load(open(sys.argv[1]))
import torch.distributed as dist  # BlendedDataset asks for the rank: one local process group

dist.init_process_group("gloo", init_method="file://" + sys.argv[2] + ".pg", rank=0, world_size=1)
cfg = GPTDatasetConfig(
    random_seed=spec["seed"], sequence_length=spec["seq_length"],
    blend=get_blend_from_list(spec["paths"]), split=spec["split"],
    path_to_cache=spec["cache"], tokenizer=Tok(spec["eod"]),
    reset_position_ids=spec["reset"], reset_attention_mask=spec["reset"],
    eod_mask_loss=spec["reset"], create_attention_mask=True)
sizes = [None if s is None else int(s) for s in spec["sizes"]]
datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, cfg).build()
out = {}
for name, ds in zip(("train", "valid", "test"), datasets):
    if ds is None:
        continue
    out[f"{name}_len"] = numpy.array(len(ds))
    if hasattr(ds, "dataset_index"):
        out[f"{name}_dataset_index"] = numpy.asarray(ds.dataset_index)
        out[f"{name}_dataset_sample_index"] = numpy.asarray(ds.dataset_sample_index)
    else:
        out[f"{name}_document_index"] = numpy.asarray(ds.document_index)
        out[f"{name}_sample_index"] = numpy.asarray(ds.sample_index)
        out[f"{name}_shuffle_index"] = numpy.asarray(ds.shuffle_index)
    n = min(len(ds), spec["max_items"])
    items = [ds[i] for i in range(n)]
    for k in ("tokens", "labels", "loss_mask", "position_ids"):
        out[f"{name}_{k}"] = numpy.stack([it[k].numpy() for it in items])
    if spec["reset"]:
        out[f"{name}_attention_mask"] = numpy.stack([it["attention_mask"].numpy() for it in items[:8]])
numpy.savez(sys.argv[2], **out)
print("ok", sorted(out))

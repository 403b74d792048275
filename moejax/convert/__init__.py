"""Checkpoint conversion between Hugging Face safetensors and moejax Orbax checkpoints
(`python -m moejax.convert hf-to-moejax|moejax-to-hf ...`)."""
from moejax.convert.convert import hf_to_moejax, load_checkpoint_config, moejax_to_hf
from moejax.convert.families import FAMILIES
from moejax.convert.hf_io import ConversionError

__all__ = ["FAMILIES", "ConversionError", "hf_to_moejax", "load_checkpoint_config", "moejax_to_hf"]

"""The config: the schema (frozen specs with their value checks) and overrides.

Recipes (`configs/NAME.py`) start from `base_config()` and change values; `model_spec(cfg)`
gives the frozen `ModelSpec` the Flax modules read.
"""
from moejax.config.schema import (AttentionSpec, CheckpointSpec, CrossEntropyImpl, DataSpec, DispatchSpec,
                                  DocumentSpec, FSDPSpec, GroupedGemmImpl, LoadBalancingType, LoggingSpec, LossSpec,
                                  MLASpec, ModelSpec, MoESpec, OptimSpec, ParallelSpec, RecomputeSpec,
                                  RotaryScalingSpec, RouterSpec, TrainSpec, model_spec, padded_vocab_size)
from moejax.config.spec import (ConfigError, RunError, Spec, apply_overrides, base_config, check_override_keys, choices,
                                split_none_overrides)
from moejax.config.spec import config_problems as problems
from moejax.config.spec import unknown_keys

__all__ = [
    "AttentionSpec", "CheckpointSpec", "ConfigError", "CrossEntropyImpl", "DataSpec", "DispatchSpec",
    "DocumentSpec", "FSDPSpec", "GroupedGemmImpl", "LoadBalancingType", "LoggingSpec", "LossSpec", "MLASpec",
    "ModelSpec", "MoESpec", "OptimSpec", "ParallelSpec", "RecomputeSpec", "RotaryScalingSpec", "RouterSpec",
    "RunError", "Spec", "TrainSpec", "apply_overrides", "base_config",
    "check_override_keys", "choices", "model_spec", "padded_vocab_size", "problems", "split_none_overrides",
    "unknown_keys",
]

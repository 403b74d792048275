"""moejax: Megatron-Core style Mixture-of-Experts training in JAX."""

"""Hand-written kernels, installed as `moejax.kernels`."""

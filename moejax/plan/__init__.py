"""The parallel-layout planner: `python -m moejax.plan --config RECIPE --gpus N --gpu-memory 80GB`.

`memory.py`: per-GPU weights, gradients, optimizer state and activations of a layout (analytic,
Korthikanti et al.'s per-layer activation terms adapted to moejax's blocks); `layouts.py`: the
layouts moejax's checks accept and a cost model to rank them; `__main__.py`: the table.
"""

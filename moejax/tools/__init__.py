"""Command-line tools around runs and checkpoints (python -m moejax.tools.NAME)."""

"""Command-line tools above the library (`python -m moejax.tools.NAME`)."""

"""Command-line entry points (absl apps): ``python -m launch.train``."""

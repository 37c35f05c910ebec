"""Model runtime (network, inference, motion detector); weights and model card in ``weights/``,
training in ``training/``, evaluation and benchmarks in ``evaluation/``."""
from pathlib import Path

# The shipped weights folder: what ``python -m app -m`` points at (the MAP's /opt/holoscan/models).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

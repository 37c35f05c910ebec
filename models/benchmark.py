"""``python -m models.benchmark [...]``: the speed and memory benchmark under the name issue 12
gives it; the code is :mod:`models.evaluation.benchmark` (same options, ``--help``)."""
from __future__ import annotations

from models.evaluation.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())

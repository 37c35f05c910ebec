"""``python -m models.evaluate [--real ...]``: the enhancement evaluation under the name issue 12
gives it; the code is :mod:`models.evaluation.enhancement` (same options, ``--help``)."""
from __future__ import annotations

from models.evaluation.enhancement import main

if __name__ == "__main__":
    raise SystemExit(main())

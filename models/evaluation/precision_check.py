"""The product's figures with the network in float32 and in bfloat16 on the CPU, side by side.

    python -m models.evaluation.precision_check       # = python -m models.evaluation.variant_check precision

Kept as the command that ``docs/inference_choice_rule_bf16.json`` records; the check itself is
:mod:`models.evaluation.variant_check`.
"""
from __future__ import annotations

from models.evaluation.variant_check import main

if __name__ == "__main__":
    raise SystemExit(main(default_variants="precision"))

"""The benchmark's in-process guard comparison runs and times both guards (models/evaluation/benchmark.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from models.evaluation.benchmark import guard_ab


def test_guard_ab_times_a_baseline_guard_file_against_the_current_one(tmp_path: Path, capsys):
    baseline = tmp_path / "guard_before.py"
    baseline.write_text((Path(__file__).resolve().parents[1] / "models" / "guard.py").read_text())
    rows = guard_ab(baseline, [96], slices=2, threads=1, rounds=1)
    assert [r["size"] for r in rows] == [96]
    assert rows[0]["baseline_s"] > 0 and rows[0]["current_s"] > 0
    assert abs(rows[0]["speedup"] - rows[0]["baseline_s"] / rows[0]["current_s"]) < 1e-9
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.parametrize("option,variants,size,max_diff", [
    # test slices are 12-bit: the layouts agree to far below one stored unit, the precisions to
    # bfloat16 rounding (under 1 % of the range), 512 tiles and a whole 600 px slice to the
    # tiles' seams (under 2 %)
    ("layout_ab", ("contiguous", "channels_last"), 64, 0.01),
    ("precision_ab", ("float32", "bfloat16"), 64, 41.0),
    ("tiles_ab", ("tile512", "tile1024"), 600, 82.0)])
def test_variant_ab_times_both_networks_and_compares_their_output(capsys, option, variants, size, max_diff):
    from models.evaluation import benchmark

    rows = getattr(benchmark, option)([size], slices=1 if size > 512 else 2, threads=1, rounds=1)
    r = rows[0]
    assert r["size"] == size
    assert all(r[f"{k}_{m}_s"] > 0 for k in ("network", "product") for m in variants)
    assert r[f"product_{variants[0]}_s"] >= r[f"network_{variants[0]}_s"]
    assert r["max_abs_diff"] < max_diff
    assert "max |diff|" in capsys.readouterr().out


def test_markdown_table_names_every_method_a_record_holds():
    from models.evaluation.benchmark import markdown

    row = {"size": 512, "path": "torch", "device": "cpu", "s_per_slice": 0.2, "peak_rss_mib": 400.0, "rss_ready_mib": 300.0}
    record = {"rows": [dict(row, method=m) for m in ("dl", "dl+guard", "bm3d", "nlm", "qc", "qc_ghost")]
              + [dict(row, method="dl", speedup_vs={"bm3d": 40.0, "nlm": 1.5})]}
    table = markdown(record).splitlines()
    assert len(table) == 2 + 7
    assert "DL product: network + guard (torch, cpu)" in table[3]
    assert "| 5.00 |" in table[2] and "40.0x vs BM3D, 1.5x vs NLM" in table[-1]
    named = markdown({"rows": [dict(row, method="dl", precision="bfloat16")]}).splitlines()
    assert "DL network alone (torch, bfloat16, cpu)" in named[2]


def test_the_commands_issue_12_names_run_the_benchmark_and_the_evaluation():
    """``python -m models.benchmark`` and ``python -m models.evaluate`` forward to the real modules."""
    import json
    import subprocess
    import sys

    from models.evaluation.benchmark import markdown

    root = Path(__file__).resolve().parents[1]
    record = root / "docs" / "model_benchmark.json"
    out = subprocess.run([sys.executable, "-m", "models.benchmark", "--markdown", str(record)], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.strip() == markdown(json.loads(record.read_text())).strip()
    real = subprocess.run([sys.executable, "-m", "models.evaluate", "--markdown",
                           str(root / "docs" / "model_evaluation_real.json")], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stderr[-800:]
    assert "| R=2 SENSE | 144 |" in real.stdout

"""The benchmark's in-process guard comparison runs and times both guards (models/evaluation/benchmark.py)."""
from __future__ import annotations

from pathlib import Path

from models.evaluation.benchmark import guard_ab


def test_guard_ab_times_a_baseline_guard_file_against_the_current_one(tmp_path: Path, capsys):
    baseline = tmp_path / "guard_before.py"
    baseline.write_text((Path(__file__).resolve().parents[1] / "models" / "guard.py").read_text())
    rows = guard_ab(baseline, [96], slices=2, threads=1, rounds=1)
    assert [r["size"] for r in rows] == [96]
    assert rows[0]["baseline_s"] > 0 and rows[0]["current_s"] > 0
    assert abs(rows[0]["speedup"] - rows[0]["baseline_s"] / rows[0]["current_s"]) < 1e-9
    assert "speed-up" in capsys.readouterr().out


def test_layout_ab_times_both_network_layouts_and_finds_the_same_output(capsys):
    from models.evaluation.benchmark import layout_ab

    rows = layout_ab([64], slices=2, threads=1, rounds=1)
    r = rows[0]
    assert r["size"] == 64
    assert all(r[f"{k}_{m}_s"] > 0 for k in ("network", "product") for m in ("contiguous", "channels_last"))
    assert r["product_contiguous_s"] >= r["network_contiguous_s"]
    # test slices are 12-bit: the layouts agree to far below one stored unit
    assert r["max_abs_diff"] < 0.01
    assert "max |diff|" in capsys.readouterr().out

"""The one owner of ``OUT/run_summary.json``: what a run did, series by series (no patient
data). Written atomically: a reader (the worker, a PACS admin) never sees half a file."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from app.contracts import SOFTWARE_NAME, SOFTWARE_VERSION, SUMMARY_FILE, EnhancedSeries, SeriesReport


def write_summary(output_folder: Path, summary: dict) -> None:
    """Write ``run_summary.json`` atomically (temporary file, then rename)."""
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    tmp = output_folder / (SUMMARY_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, output_folder / SUMMARY_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def read_summary(output_folder: Path) -> dict:
    return json.loads((Path(output_folder) / SUMMARY_FILE).read_text())


def summary_of(reports: list[SeriesReport], enhanced: list[EnhancedSeries], derived: list[dict], *,
               status: str, **extra) -> dict:
    """The summary of a run: software, model and device, every series found, what was derived."""
    return {
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "model": asdict(enhanced[0].model) if enhanced else None,
        "device": enhanced[0].device if enhanced else None,
        "series": [asdict(r) for r in reports],
        "derived": derived,
        "status": status,
        **extra,
    }

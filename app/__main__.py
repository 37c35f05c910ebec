"""``python -m app -i IN -o OUT -m MODELS``: run the application, exit with a documented code.

Exit codes (also in the README):
    0  derived series written (some series may have been skipped; see run_summary.json)
    1  internal error
    2  usage error (bad arguments, missing input or model path)
    3  no DICOM study in the input (empty folder, only non-DICOM or unreadable files)
    4  DICOM found, but no series to enhance (non-MR, not cervical, truncated, ...)
    5  model files missing, corrupt (checksum) or not loadable
A one-line reason goes to stderr and, for codes 1, 3, 4 and 5, to run_summary.json.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_DICOM, EXIT_NOTHING_TO_DO, EXIT_MODEL = 0, 1, 2, 3, 4, 5


def _output_folder(argv: list[str]) -> Path:
    for flag in ("-o", "--output"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return Path(argv[argv.index(flag) + 1])
    return Path(os.environ.get("HOLOSCAN_OUTPUT_PATH", "output"))


def _classify_failure(exc: BaseException) -> tuple[int, str]:
    from monai.deploy.exceptions import ItemNotExistsError

    from operators.derived_series_writer import NoEligibleSeriesError
    from operators.dl_enhancement import ModelError

    if isinstance(exc, ItemNotExistsError) and "No study loaded" in str(exc):
        return EXIT_NO_DICOM, "no DICOM study found in the input folder"
    if isinstance(exc, NoEligibleSeriesError):
        return EXIT_NOTHING_TO_DO, str(exc)
    if isinstance(exc, ModelError):
        return EXIT_MODEL, str(exc)
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def main() -> int:
    argv = list(sys.argv)  # the SDK reads sys.argv itself (Application.argv)
    start = time.perf_counter()
    # highdicom logs referenced SOP Instance UIDs at INFO while building the SR.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    from app.app import CervicalDLEnhanceApp  # after argv is known: imports take seconds

    output = _output_folder(argv[1:])
    try:
        app = CervicalDLEnhanceApp()
        app.run()
    except SystemExit as exc:  # argparse inside the SDK: missing -i/-m path
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and a code
        code, reason = _classify_failure(exc)
        print(f"cervical-dl-enhance: FAILED (exit {code}): {reason}", file=sys.stderr)
        summary_path = output / "run_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() and code == EXIT_NOTHING_TO_DO else {}
        summary.update({"status": "failed" if code != EXIT_NOTHING_TO_DO else "nothing_to_do", "exit_code": code,
                        "reason": reason})
        output.mkdir(parents=True, exist_ok=True)
        (output / "run_summary.json").write_text(json.dumps(summary, indent=2))
        return code
    print_summary(output, time.perf_counter() - start)
    return EXIT_OK


def print_summary(output: Path, seconds: float) -> None:
    """Short human summary of run_summary.json (no patient data)."""
    summary = json.loads((output / "run_summary.json").read_text())
    print(f"series found: {len(summary['series'])}")
    for s in summary["series"]:
        print(f"  {str(s['series_number']):>5}  {s['n_instances']:3d} images  "
              f"{(s['role'] or '-'):13s} {s['status']:8s} {'' if s['role'] else s['reason']}")
    for d in summary["derived"]:
        print(f"  wrote {d['role']:13s} -> derived series {d['series_number']} ({d['n_instances']} images, "
              f"{d['seconds']:.1f} s on {d['device']}) in {output / 'derived' / d['folder']}")
    model = summary.get("model") or {}
    print(f"model {model.get('name')} {model.get('version')}; total {seconds:.1f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())

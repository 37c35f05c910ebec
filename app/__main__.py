"""``python -m app -i IN -o OUT -m MODELS``: run the application, exit with a documented code.

Exit codes (also in the README):
    0  derived series written (some series may have been skipped; see run_summary.json)
    1  internal error
    2  usage error (bad arguments, missing input or model path, unusable setting)
    3  no DICOM study in the input (empty folder, only non-DICOM or unreadable files)
    4  DICOM found, but no series to enhance (non-MR, not cervical, truncated, ...)
    5  model files missing, corrupt (checksum) or not loadable
    6  the output cannot be written (storage full, quota, read-only or not permitted)
A one-line reason goes to stderr and, for codes 1 and 3-6, to run_summary.json (when the
output can still take it). A failed run leaves no results in the output folder.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_DICOM, EXIT_NOTHING_TO_DO, EXIT_MODEL, EXIT_STORAGE = 0, 1, 2, 3, 4, 5, 6
_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
#: What a run writes into the output folder besides run_summary.json (removed on failure).
_RESULTS = ("derived", "qc", "qc.json")


def _output_folder(argv: list[str]) -> Path:
    for flag in ("-o", "--output"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return Path(argv[argv.index(flag) + 1])
    return Path(os.environ.get("HOLOSCAN_OUTPUT_PATH", "output"))


def _storage_error(exc: BaseException, output: Path) -> OSError | None:
    """The OSError (in ``exc`` or its causes) that says the output cannot be written."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _STORAGE_FULL:
            return exc
        if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE and exc.filename is not None:
            try:
                if Path(exc.filename).resolve().is_relative_to(output.resolve()):
                    return exc
            except (OSError, ValueError):
                pass
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _classify_failure(exc: BaseException, output: Path = Path("output")) -> tuple[int, str]:
    from monai.deploy.exceptions import ItemNotExistsError

    from operators.derived_series_writer import ConfigurationError, NoEligibleSeriesError
    from operators.dl_enhancement import ModelError

    if isinstance(exc, ItemNotExistsError) and "No study loaded" in str(exc):
        return EXIT_NO_DICOM, "no DICOM study found in the input folder"
    if isinstance(exc, NoEligibleSeriesError):
        return EXIT_NOTHING_TO_DO, str(exc)
    if isinstance(exc, ModelError):
        return EXIT_MODEL, str(exc)
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE, str(exc)
    storage = _storage_error(exc, output)
    if storage is not None:
        what = "output storage full" if storage.errno in _STORAGE_FULL else "output folder not writable"
        return EXIT_STORAGE, f"{what} ({os.strerror(storage.errno)}); nothing was written"
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
        code, reason = _classify_failure(exc, output)
        print(f"cervical-dl-enhance: FAILED (exit {code}): {reason}", file=sys.stderr)
        _record_failure(output, code, reason)
        return code
    print_summary(output, time.perf_counter() - start)
    return EXIT_OK


def _record_failure(output: Path, code: int, reason: str) -> None:
    """Remove this run's results and write the reason into run_summary.json, atomically;
    on a full disk the one line on stderr is all there is."""
    from operators.derived_series_writer import write_summary

    for name in _RESULTS:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
    summary_path = output / "run_summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() and code == EXIT_NOTHING_TO_DO else {}
    except (OSError, ValueError):
        summary = {}
    summary.update({"status": "failed" if code != EXIT_NOTHING_TO_DO else "nothing_to_do", "exit_code": code,
                    "reason": reason})
    try:
        write_summary(output, summary)
    except OSError as exc:
        print(f"cervical-dl-enhance: run_summary.json not written: {os.strerror(exc.errno or 0)}", file=sys.stderr)


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

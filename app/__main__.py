"""``python -m app -i IN -o OUT -m MODELS``: run the application, exit with a documented code.

Exit codes: :class:`app.contracts.ExitCode` (table in the README).
A one-line reason goes to stderr and, for codes 1 and 3-6, to run_summary.json (when the
output can still take it). A failed run leaves no results in the output folder.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from app.contracts import (RESULTS, ConfigurationError, ExitCode, ModelError, NoDicomError, NoEligibleSeriesError,
                           SeriesReport)
from app.run_summary import read_summary, summary_of, write_summary

_STORAGE_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


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
    for kind, code in ((NoDicomError, ExitCode.NO_DICOM), (NoEligibleSeriesError, ExitCode.NOTHING_TO_DO),
                       (ModelError, ExitCode.MODEL), (ConfigurationError, ExitCode.USAGE)):
        if isinstance(exc, kind):
            return code, str(exc)
    storage = _storage_error(exc, output)
    if storage is not None:
        what = "output storage full" if storage.errno in _STORAGE_FULL else "output folder not writable"
        return ExitCode.STORAGE, f"{what} ({os.strerror(storage.errno)}); nothing was written"
    return ExitCode.INTERNAL, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


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
        return ExitCode.USAGE if exc.code not in (0, None) else ExitCode.OK
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and a code
        code, reason = _classify_failure(exc, output)
        print(f"cervical-dl-enhance: FAILED (exit {code}): {reason}", file=sys.stderr)
        _record_failure(output, code, reason, getattr(exc, "reports", []))
        return code
    print_summary(output, time.perf_counter() - start)
    return ExitCode.OK


def _record_failure(output: Path, code: int, reason: str, reports: list[SeriesReport]) -> None:
    """Remove this run's results and write the reason into run_summary.json, atomically;
    on a full disk the one line on stderr is all there is."""
    for name in RESULTS:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
    status = "nothing_to_do" if code == ExitCode.NOTHING_TO_DO else "failed"
    try:
        write_summary(output, summary_of(reports, [], [], status=status, exit_code=code, reason=reason))
    except OSError as exc:
        print(f"cervical-dl-enhance: run_summary.json not written: {os.strerror(exc.errno or 0)}", file=sys.stderr)


def print_summary(output: Path, seconds: float) -> None:
    """Short human summary of run_summary.json (no patient data)."""
    summary = read_summary(output)
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

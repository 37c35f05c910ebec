"""CPU seconds of one ``python -m app`` run, per operator and per main step, without a profiler.

    python -m models.evaluation.app_stage_cpu -i STUDY -o OUT -m models/weights [--stages FILE]

Why not cProfile: on a shared machine a wall-clock profile swells with the other load, and
a CPU-clock profile charges its own per-call overhead to Python-heavy code (the SR and the
writers show 3-5x their real cost). Here each operator's ``compute`` and a few steps are
wrapped with ``time.process_time`` (the operators run one after another, so the process's
CPU clock is theirs). Arguments other than ``--stages`` go to the application.
"""
from __future__ import annotations

import atexit
import functools
import runpy
import sys
import time

_START = time.process_time()
_SECONDS: dict[str, float] = {}


def _timed(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its CPU seconds to ``label``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            _SECONDS[label] = _SECONDS.get(label, 0.0) + time.process_time() - start

    setattr(owner, name, wrapper)


def _report(path: str | None) -> None:
    _SECONDS["total (process)"] = time.process_time() - _START
    text = "".join(f"{label:32s} {seconds:7.2f}\n" for label, seconds in _SECONDS.items())
    if path:
        with open(path, "w") as f:
            f.write(text)
    else:
        sys.stderr.write(text)


def main() -> None:
    args = sys.argv[1:]
    path = None
    if "--stages" in args:
        i = args.index("--stages")
        path = args[i + 1]
        del args[i : i + 2]
    start = time.process_time()
    import app.app  # noqa: F401  (the application's imports, as python -m app does them)
    _SECONDS["imports (app.app)"] = time.process_time() - start
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    import models.guard
    import models.inference
    import operators.cervical_series_selector as selector
    import operators.derived_series_writer as derived_writer
    import operators.dl_enhancement as enhancement
    import operators.qc_report_writer as report_writer
    import operators.quality_check as quality_check
    import qc.measures

    _timed(DICOMDataLoaderOperator, "compute", "op DICOM loader (SDK)")
    _timed(selector.CervicalSeriesSelectorOperator, "compute", "op selector")
    _timed(enhancement.DLEnhancementOperator, "compute", "op DL enhancement")
    _timed(models.inference, "enhance_volume", "  network (enhance_volume)")
    _timed(models.guard, "guard_series", "  guard")  # imported by enhance_series when called
    _timed(quality_check.QualityCheckOperator, "compute", "op quality check")
    _timed(qc.measures, "series_masks", "  body masks")
    _timed(qc.measures, "measure_series", "  measures")
    _timed(qc.measures, "locate_rois", "  C3 search")
    _timed(derived_writer.DerivedSeriesWriterOperator, "compute", "op derived writer")
    _timed(report_writer.QCReportWriterOperator, "compute", "op QC report writer")
    _timed(report_writer, "build_sr", "  SR build")
    _timed(report_writer, "render_pdf", "  PDF render")
    atexit.register(_report, path)
    sys.argv = ["app", *args]
    runpy.run_module("app", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

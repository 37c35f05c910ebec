"""The warm runner: a long-lived process that imports the application once and forks one
child per study run, so a run pays only its own work (python run mode, ``CPACS_RUNNER_WARM``).

    <CPACS_APP_PYTHON> -m cervical_pacs.warm --requests FD --replies FD    (started by runner.WarmRunner)

The worker starts it (one per job thread) with the same environment, working directory,
stack limit and parent-death signal as a cold ``python -m app`` run. It imports the
application's modules (holoscan, the MONAI Deploy SDK, torch, pydicom, highdicom, the
operators and what they import lazily), checks that a fork leaves it single-threaded (a fork
copies only the calling thread: a lock or thread pool held by another thread would be
broken in the child; the only threads the imports start are numpy's and scipy's OpenBLAS
pools, which stop themselves around a fork), freezes the garbage collector's view of those objects (fewer
copy-on-write page copies in the children), and answers ``ready``. The models are loaded
by the application in each child, as in a cold run: their checksums are verified per run
(they are small: about 0.1 s of a run).

Per request, JSON lines on the request pipe::

    {"in": IN, "out": OUT, "models": MODELS, "log_dir": DIR, "cwd": CWD, "env": {...}}
      -> {"event": "started", "pid": CHILD}
      -> {"event": "imported", "new_modules": M}     (from the child: modules the run imported itself)
      -> {"event": "exited", "pid": CHILD, "code": N, "max_rss_kib": K, "cpu_s": S}

The child is what ``python -m app -i IN -o OUT -m MODELS`` would be: its own session
(process group: the worker kills the group on a timeout or a stop request), a parent-death
signal (it dies with this process, which dies with the worker), stdout/stderr into
``DIR/app.stdout`` / ``DIR/app.stderr``, the job's environment and ``sys.argv``, and
``app.__main__.main()``'s return value as its exit status. A crash or a leak in a run stays
in its child; this process never runs the application itself. It exits when the request
pipe closes (the worker stopped or recycled it).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

PR_SET_PDEATHSIG = 1
#: Modules the application imports lazily, inside its operators (kept out of its start-up).
LAZY_IMPORTS = ("app.__main__", "app.app", "models.inference", "models.guard", "models.motion_detector",
                "qc.report_pdf", "matplotlib.pyplot", "matplotlib.backends.backend_pdf", "highdicom", "contourpy",
                "PIL.JpegImagePlugin", "torch.utils.serialization")


def thread_count() -> int:
    """Threads of this process (``/proc/self/task``)."""
    return len(os.listdir("/proc/self/task"))


def preload() -> None:
    """Import what every run needs, without starting a thread (no app, no tensor op)."""
    import importlib

    import matplotlib
    matplotlib.use("Agg")  # as qc/report_pdf.py does before it draws
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    # highdicom reads the DICOM standard's module tables (JSON, cached per process) when the
    # first SR is built: ~0.35 s CPU of every run unless the warm runner has read them. Private
    # API: a highdicom without it only loses the saving.
    try:
        from highdicom import _standard_utils as standard
        standard.get_sop_class_iod_map(), standard.get_iod_module_map(), standard.get_module_attribute_map()
    except (ImportError, AttributeError):
        pass


def _send(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _run_child(request: dict, parent: int) -> int:
    """In the forked child: become ``python -m app -i IN -o OUT -m MODELS`` and run it."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the warm runner died before the signal was armed
        return 70
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process (SIGPIPE stays ignored)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log_dir = Path(request["log_dir"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, name in ((1, "app.stdout"), (2, "app.stderr")):
        out = os.open(log_dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, fd)
        os.close(out)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import app.__main__ as app_main

    sys.argv = [app_main.__file__, "-i", request["in"], "-o", request["out"], "-m", request["models"]]
    root = logging.getLogger()  # as `python -m app` configures it (its __main__ block)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.basicConfig(level=logging.INFO, force=True)
    return int(app_main.main())


def threads_left_by_a_fork() -> int:
    """Threads of this process after a throw-away fork. numpy's and scipy's OpenBLAS start
    thread pools at import and stop them in their ``pthread_atfork`` handlers (restarted on
    their next use): 1 means every other thread is one that makes itself safe to fork."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return thread_count()


def serve(requests_fd: int, replies_fd: int) -> int:
    start = time.monotonic()
    preload()
    threads = threads_left_by_a_fork()
    gc.collect()
    gc.freeze()  # the imported modules' objects: children do not touch their pages for the GC
    preloaded = set(sys.modules)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        _send(replies_fd, {"event": "ready", "pid": os.getpid(), "threads": threads,
                           "preload_s": round(time.monotonic() - start, 2), "max_rss_kib": rss})
    except BrokenPipeError:  # the worker stopped while we imported
        return 0
    if threads != 1:  # forking now could copy a lock held by another thread: refuse, the worker runs cold
        return 3
    requests = os.fdopen(requests_fd, "r")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_child(request, parent)
                # What the run imported that the warm runner had not: LAZY_IMPORTS is complete when 0-few.
                # (The parent waits in wait4 meanwhile: this line comes before its "exited".)
                _send(replies_fd, {"event": "imported", "new_modules": len(set(sys.modules) - preloaded)})
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        try:
            _send(replies_fd, {"event": "started", "pid": pid})
            _, status, usage = os.wait4(pid, 0)
            _send(replies_fd, {"event": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status),
                               "max_rss_kib": usage.ru_maxrss, "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)})
        except BrokenPipeError:  # the worker is gone: so is the run (its child dies with us)
            return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cervical_pacs.warm", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, required=True, help="file descriptor to read requests from")
    parser.add_argument("--replies", type=int, required=True, help="file descriptor to write replies to")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's Ctrl-C is the worker's: it closes our pipe
    return serve(args.requests, args.replies)


if __name__ == "__main__":
    sys.exit(main())

"""A private network namespace for tests and benchmarks (Orthanc 1.10.1 cannot bind loopback only).

``with private_network():`` moves the *calling thread* into a fresh network namespace
(``unshare(CLONE_NEWNET)``, then ``ip link set lo up``) and moves it back on exit (``setns`` on a
descriptor of the original ``/proc/thread-self/ns/net``). Processes started inside inherit the
namespace; sockets opened by the thread inside live in it. Import everything you need
*before* entering: there is no route out. Needs root (CAP_SYS_ADMIN); otherwise, or when the
kernel refuses, it yields a note and runs on the host's loopback.
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000


@contextmanager
def private_network() -> Iterator[str]:
    if os.geteuid() != 0:
        yield "host loopback (not root)"
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            yield f"host loopback (unshare failed: errno {ctypes.get_errno()})"
            return
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
            yield "private network namespace"
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
    finally:
        os.close(own)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

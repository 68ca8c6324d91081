"""Run a test worker in several gloo processes on this machine (shared by the DDP tests)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_workers(worker: Callable[[int, int, str], None], nprocs: int, outdir: Path, *, timeout: float = 90) -> None:
    """Spawn ``worker(rank, port, outdir)`` in ``nprocs`` processes and wait; fail the test after ``timeout`` s."""
    ctx = mp.start_processes(worker, args=(free_port(), str(outdir)), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {timeout:.0f} s")
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.terminate()

"""Threads for runs that share a machine: no oversubscription by default.

torch uses one intra-op thread per physical core. Two runs that each do so on the same cores
fight over them, and small kernels with per-operation barriers slow down by an order of magnitude
(measured here: 25x). `auto_threads` takes only the cores that other processes leave idle,
judged by the tasks runnable right now and the 1-minute load average, less this process's own
threads; training re-evaluates it every few seconds, so concurrent runs settle on one thread each
and a lone run takes every core.
"""

from __future__ import annotations

import os

import torch

__all__ = ["auto_threads", "available_cores"]

_CORES = torch.get_num_threads()  # torch's default at import: the physical cores


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at most torch's default."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    return max(1, min(allowed, _CORES))


def _runnable_now() -> int:
    """Tasks runnable at this instant, system-wide (``/proc/loadavg``; 0 where unavailable)."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0


def auto_threads(own_threads: int = 0) -> int:
    """Threads to use now: the available cores not kept busy by other processes, at least 1.

    ``own_threads``: this process's threads that are working (0 before it starts); the caller
    itself is running, so at least one runnable task is always its own.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average: take every core
        return available_cores()
    own = max(1, own_threads)
    others = max(0.0, load - own_threads, _runnable_now() - own)
    return max(1, available_cores() - round(others))

"""The one thread policy of the product: how many intra-op threads, and how idle workers wait.

Why a policy: a hospital box or a laptop is never idle. torch (OpenMP) and ONNX Runtime start one
worker per core, and an idle worker *spins* (busy-waits) for a while before it sleeps. Beside
another CPU-bound process on the same cores, a spinning worker burns the time slice its partner
needs, and each parallel region then waits for its slowest, descheduled worker: that is how a
90-second demo took 40 minutes beside a second torch job (issue 23; measured in
``benchmarks/bench_contention.py``, docs/deploy.md "Sharing the CPU").

The policy (one home, read by the CLI, the ONNX session builder and the torch backend):

- ``threads``: ``--threads`` (the CLI's global option) if given, else ``FETALPLANES_THREADS``,
  else ``OMP_NUM_THREADS``, else the usable cores (affinity respected) that other processes are not
  keeping busy at start-up (sampled from ``/proc/stat`` for 50 ms), at least one. Beside one busy
  process on 2 cores, one thread beat two by 22 vs 18 img/s in demo training; alone, two win
  (30 vs 21 img/s). The count is fixed for the process's life: pass ``--threads`` for a
  long-running service on a box whose load changes, or for bit-exact reruns (float sums depend
  on the thread count).
- ``wait``: ``passive`` (the default) - OpenMP ``OMP_WAIT_POLICY=PASSIVE`` and ONNX Runtime's
  ``session.intra_op.allow_spinning=0``, so an idle worker sleeps at once; or ``spin``
  (``FETALPLANES_WAIT=spin``) - the libraries' own defaults, a few per cent faster on a dedicated,
  idle box.

It is applied once per process by the process's owner (``fetalplanes``' entry point), before
torch is imported, as environment variables (OpenMP reads them when the library loads), and
logged once. Loading a model never changes a process-wide setting: a program that imports
fetalplanes keeps its own torch settings, and ONNX Runtime sessions take the policy per session.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from fetalplanes.core.errors import UserError

__all__ = ["ENV_THREADS", "ENV_WAIT", "MAX_THREADS", "WAIT_POLICIES", "ThreadPolicy", "apply_process_policy",
           "available_cores", "busy_cores", "check_threads", "choose_policy", "process_policy"]

log = logging.getLogger(__name__)

ENV_THREADS = "FETALPLANES_THREADS"
"""Environment variable: intra-op threads (a positive integer); ``--threads`` wins over it."""
ENV_WAIT = "FETALPLANES_WAIT"
"""Environment variable: how idle workers wait, one of :data:`WAIT_POLICIES`."""
WAIT_POLICIES = ("passive", "spin")
MAX_THREADS = 1024
"""The most intra-op threads any setting accepts. ONNX Runtime and ``torch.set_num_threads`` take a
C int (2**31 failed with a multi-line pybind TypeError blamed on the model file, and a traceback),
and ORT starts one OS thread each (100000 hung a session start on a 2-core box; 1024 starts in
under 2 s). More threads than cores only oversubscribe them (see above)."""

_applied: "ThreadPolicy | None" = None


def available_cores() -> int:
    """CPU cores this process may use (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def _cpu_ticks(cpus: set[int] | None) -> tuple[int, int]:
    """(all ticks, idle ticks) summed over ``cpus`` (every CPU when None) from ``/proc/stat``."""
    total = idle = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            idle += ticks[3] + ticks[4]
    return total, idle


def busy_cores(sample_s: float = 0.05) -> float | None:
    """How many of this process's usable cores other processes keep busy, measured from
    ``/proc/stat`` over ``sample_s`` seconds while this process sleeps (cores, float); None where
    ``/proc/stat`` cannot be read (not Linux)."""
    cpus = _usable_cpus()
    try:
        t0, i0 = _cpu_ticks(cpus)
        time.sleep(sample_s)
        t1, i1 = _cpu_ticks(cpus)
    except (OSError, ValueError):
        return None
    if t1 <= t0:
        return None
    return (1.0 - (i1 - i0) / (t1 - t0)) * (len(cpus) if cpus else (os.cpu_count() or 1))


@dataclass(frozen=True)
class ThreadPolicy:
    """Intra-op ``threads`` for torch and ONNX Runtime, the ``wait`` policy of idle workers
    (one of :data:`WAIT_POLICIES`), where the thread count came from (``source``) and the usable
    ``cores``."""

    threads: int
    wait: str
    source: str
    cores: int

    @property
    def spinning(self) -> bool:
        """ONNX Runtime's ``session.intra_op.allow_spinning``."""
        return self.wait == "spin"

    def describe(self) -> str:
        """One line for the log: ``2 intra-op threads (usable cores: 2), passive waiting``."""
        return (f"{self.threads} intra-op thread{'s' if self.threads != 1 else ''} ({self.source}; "
                f"{self.cores} usable core{'s' if self.cores != 1 else ''}), {self.wait} waiting")

    def environment(self) -> dict[str, str]:
        """The variables OpenMP (torch, oneDNN, MKL) reads when it loads."""
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.wait == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        return env

    def as_dict(self) -> dict[str, object]:
        """For summaries and results JSON."""
        return {"threads": self.threads, "wait": self.wait, "source": self.source, "cores": self.cores}


def check_threads(threads: int, name: str = "threads") -> int:
    """``threads`` when it is an integer in 1..:data:`MAX_THREADS`; ``UserError`` naming ``name``
    (the option or variable) and the valid range otherwise."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise UserError(f"{name} {threads}: expected an integer from 1 to {MAX_THREADS} (intra-op threads; "
                        f"{available_cores()} usable cores here)")
    return threads


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise UserError(f"{name}={value!r}: expected an integer from 1 to {MAX_THREADS} (intra-op threads)")
    return n


def choose_policy(threads: int | None = None, environ: Mapping[str, str] | None = None,
                  busy: Callable[[], float | None] | None = None) -> ThreadPolicy:
    """The policy for ``threads`` (the ``--threads`` option; None: from the environment, else the
    usable cores that ``busy()``, default :func:`busy_cores`, does not find busy). Raises ``UserError`` naming the variable and
    what it expects when ``FETALPLANES_THREADS``, ``OMP_NUM_THREADS`` or ``FETALPLANES_WAIT`` is
    malformed."""
    env = os.environ if environ is None else environ
    cores = available_cores()
    wait = env.get(ENV_WAIT, "passive").strip().lower() or "passive"
    if wait not in WAIT_POLICIES:
        raise UserError(f"{ENV_WAIT}={env.get(ENV_WAIT)!r}: expected one of {list(WAIT_POLICIES)}")
    if threads is not None:
        return ThreadPolicy(check_threads(int(threads), "--threads"), wait, "--threads", cores)
    for name in (ENV_THREADS, "OMP_NUM_THREADS"):
        if env.get(name, "").strip():
            return ThreadPolicy(_positive_int(env[name], name), wait, name, cores)
    others = (busy or busy_cores)() if cores > 1 else None
    if others is None:
        return ThreadPolicy(cores, wait, "one per usable core", cores)
    taken = min(cores - 1, int(others + 0.5))  # a core counts as taken when others keep it half busy
    return ThreadPolicy(cores - taken, wait, f"the usable cores not busy at start-up: {others:.1f} busy", cores)


def apply_process_policy(policy: ThreadPolicy, environ: MutableMapping[str, str] | None = None,
                         level: int = logging.INFO) -> ThreadPolicy:
    """Make ``policy`` this process's: its variables set in ``environ`` (default ``os.environ``)
    for OpenMP to read when torch loads, and the policy returned by :func:`process_policy`;
    logged once at ``level``.

    Only the process's owner calls this (the CLI entry point), before torch is imported: once
    OpenMP has loaded, its wait policy can no longer change, so then only ONNX Runtime sessions and
    the torch backend's own calls follow the policy, and the log says so.
    """
    global _applied
    env = os.environ if environ is None else environ
    env.update(policy.environment())
    _applied = policy
    late = "torch" in sys.modules
    log.log(level, "threads: %s%s", policy.describe(),
             " (torch was already loaded: its wait policy is the host's)" if late else "")
    return policy


def process_policy() -> ThreadPolicy:
    """The policy applied to this process, or (when none was) the one its environment gives, not
    applied: there the host program owns the CPU, so the cores are not sampled (no 50 ms
    ``/proc/stat`` read per call, e.g. per ONNX Runtime session a library user builds)."""
    return _applied if _applied is not None else choose_policy(busy=_not_sampled)


def _not_sampled() -> None:
    return None

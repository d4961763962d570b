"""The one thread policy of the product: how many intra-op threads, and how idle workers wait.

Why a policy: a hospital box or a laptop is never idle. torch (OpenMP) and ONNX Runtime start one
worker per core, and an idle worker *spins* (busy-waits) for a while before it sleeps. Beside
another CPU-bound process on the same cores, a spinning worker burns the time slice its partner
needs, and each parallel region then waits for its slowest, descheduled worker: that is how a
90-second demo took 40 minutes beside a second torch job (issue 23; measured in
``benchmarks/bench_contention.py``, docs/deploy.md "Sharing the CPU").

The policy (one home, read by the CLI, the ONNX session builder and the torch backend):

- ``threads``: ``--threads`` (the CLI's global option) if given, else ``FETALPLANES_THREADS``,
  else ``OMP_NUM_THREADS``, else the usable cores (affinity and container limits respected).
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
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from fetalplanes.core.errors import UserError

__all__ = ["ENV_THREADS", "ENV_WAIT", "WAIT_POLICIES", "ThreadPolicy", "apply_process_policy", "available_cores",
           "choose_policy", "process_policy"]

log = logging.getLogger(__name__)

ENV_THREADS = "FETALPLANES_THREADS"
"""Environment variable: intra-op threads (a positive integer); ``--threads`` wins over it."""
ENV_WAIT = "FETALPLANES_WAIT"
"""Environment variable: how idle workers wait, one of :data:`WAIT_POLICIES`."""
WAIT_POLICIES = ("passive", "spin")

_applied: "ThreadPolicy | None" = None


def available_cores() -> int:
    """CPU cores this process may use (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{name}={value!r}: expected a positive integer (intra-op threads)")
    return n


def choose_policy(threads: int | None = None, environ: Mapping[str, str] | None = None) -> ThreadPolicy:
    """The policy for ``threads`` (the ``--threads`` option; None: from the environment or the
    usable cores). Raises ``UserError`` naming the variable and what it expects when
    ``FETALPLANES_THREADS``, ``OMP_NUM_THREADS`` or ``FETALPLANES_WAIT`` is malformed."""
    env = os.environ if environ is None else environ
    cores = available_cores()
    wait = env.get(ENV_WAIT, "passive").strip().lower() or "passive"
    if wait not in WAIT_POLICIES:
        raise UserError(f"{ENV_WAIT}={env.get(ENV_WAIT)!r}: expected one of {list(WAIT_POLICIES)}")
    if threads is not None:
        if int(threads) < 1:
            raise UserError(f"--threads {threads}: expected a positive integer (intra-op threads)")
        return ThreadPolicy(int(threads), wait, "--threads", cores)
    for name in (ENV_THREADS, "OMP_NUM_THREADS"):
        if env.get(name, "").strip():
            return ThreadPolicy(_positive_int(env[name], name), wait, name, cores)
    return ThreadPolicy(cores, wait, "one per usable core", cores)


def apply_process_policy(policy: ThreadPolicy, environ: MutableMapping[str, str] | None = None) -> ThreadPolicy:
    """Make ``policy`` this process's: its variables set in ``environ`` (default ``os.environ``)
    for OpenMP to read when torch loads, and the policy returned by :func:`process_policy`.

    Only the process's owner calls this (the CLI entry point), before torch is imported: once
    OpenMP has loaded, its wait policy can no longer change, so then only ONNX Runtime sessions and
    the torch backend's own calls follow the policy, and the log says so.
    """
    global _applied
    env = os.environ if environ is None else environ
    env.update(policy.environment())
    _applied = policy
    late = "torch" in sys.modules
    log.info("threads: %s%s", policy.describe(),
             " (torch was already loaded: its wait policy is the host's)" if late else "")
    return policy


def process_policy() -> ThreadPolicy:
    """The policy applied to this process, or (when none was) the one its environment gives, not applied."""
    return _applied if _applied is not None else choose_policy()

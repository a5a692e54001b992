"""A local launcher: N processes of one command on this machine, as one JAX job.

For development and tests (CPU collectives use gloo, JAX's default on CPU). On
a real cluster use its own launcher (Slurm, mpirun, a TPU pod's); `initialize`
reads the layout from there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from rattr_jax.distributed import _multihost as M

#: Seconds between SIGTERM and SIGKILL when stopping the other processes, and between a
#: forwarded SIGINT/SIGTERM and SIGKILL for processes that do not exit on it (a process in
#: which `jax.distributed` runs may keep going on SIGTERM: it is JAX's preemption notice).
GRACE_SECONDS = 10.0


def free_port(host: str = "localhost") -> int:
  """A TCP port that was free a moment ago on ``host``."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return int(s.getsockname()[1])


def process_env(process_id: int, num_processes: int, coordinator: str, *,
                devices_per_process: int | None = None, heartbeat_timeout: int | None = None,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
  """The environment of process ``process_id`` (read back by `initialize`)."""
  env = dict(os.environ if base is None else base)
  env[M.ENV_COORDINATOR] = coordinator
  env[M.ENV_NUM_PROCESSES] = str(num_processes)
  env[M.ENV_PROCESS_ID] = str(process_id)
  if devices_per_process is not None:
    env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
  if heartbeat_timeout is not None:
    env[M.ENV_HEARTBEAT] = str(heartbeat_timeout)
  return env


def _exit_code(rc: int) -> int:
  return 128 - rc if rc < 0 else rc


def launch(command: Sequence[str], *, num_processes: int, devices_per_process: int | None = None,
           heartbeat_timeout: int | None = None, host: str = "localhost",
           env: Mapping[str, str] | None = None, poll_seconds: float = 0.1) -> int:
  """Runs ``command`` in ``num_processes`` local processes forming one JAX job.

  Each process gets ``JAX_COORDINATOR_ADDRESS`` (``host`` and a free port),
  ``RATTR_NUM_PROCESSES``, ``RATTR_PROCESS_ID`` and, if given,
  ``JAX_NUM_CPU_DEVICES`` and ``RATTR_HEARTBEAT_TIMEOUT``; the command must
  call `initialize` (the ``rattr`` command line does, `join_job`). SIGINT and
  SIGTERM received by the launcher are forwarded to every
  process; those still running `GRACE_SECONDS` later are killed. When one process exits with an error the others are terminated
  (SIGTERM, then SIGKILL after `GRACE_SECONDS`).

  Returns:
    0 if every process succeeded, else the first failing process's exit code
    (``128 + n`` for a process killed by signal ``n``).
  """
  if num_processes < 1:
    raise ValueError(f"`num_processes` must be >= 1; got {num_processes}.")
  if devices_per_process is not None and devices_per_process < 1:
    raise ValueError(f"`devices_per_process` must be >= 1; got {devices_per_process}.")
  if not command:
    raise ValueError("`command` is empty.")
  coordinator = f"{host}:{free_port(host)}"
  procs: list[subprocess.Popen] = []
  received: list[int] = []

  signalled: list[float] = []

  def forward(signum, _frame):
    received.append(signum)
    signalled.append(time.monotonic())
    for p in procs:
      if p.poll() is None:
        try:
          p.send_signal(signum)
        except ProcessLookupError:
          pass

  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  failed: int | None = None
  try:
    for i in range(num_processes):
      procs.append(subprocess.Popen(
          list(command), start_new_session=True,
          env=process_env(i, num_processes, coordinator, devices_per_process=devices_per_process,
                          heartbeat_timeout=heartbeat_timeout, base=env)))
    while any(p.poll() is None for p in procs):
      if signalled and time.monotonic() - signalled[0] > GRACE_SECONDS:
        for p in procs:
          if p.poll() is None:
            p.kill()
      if failed is None and not received:
        for p in procs:
          rc = p.poll()
          if rc not in (None, 0):
            failed = _exit_code(rc)
            break
        if failed is not None:
          _stop(procs)
      time.sleep(poll_seconds)
    if failed is None and received:  # stopped by a signal: its status, as a shell reports it
      failed = 128 + received[0]
    if failed is None:
      failed = next((_exit_code(p.returncode) for p in procs if p.returncode != 0), None)
    return 0 if failed is None else failed
  finally:
    _stop(procs)
    for s, h in old.items():
      signal.signal(s, h)


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  live = [p for p in procs if p.poll() is None]
  for p in live:
    try:
      p.terminate()
    except ProcessLookupError:
      pass
  deadline = time.monotonic() + GRACE_SECONDS
  for p in live:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def join_job() -> bool:
  """Makes a process that `launch` started (its environment names ``RATTR_PROCESS_ID``) a
  member of its job: starts the runtime (`initialize`) and, unless ``RATTR_ALL_OUTPUT`` is
  set, silences the standard output of every process but process 0 (errors and warnings
  stay). Returns whether this process was launched; without the variable it does nothing.

  The ``rattr`` command line calls it first, so ``rattr launch -n N -- <command>`` runs
  ``python -m rattr_jax.cli <command>`` in each process.
  """
  if M.ENV_PROCESS_ID not in os.environ:
    return False
  M.initialize()
  if os.environ.get(M.ENV_PROCESS_ID, "0") not in ("", "0") and not os.environ.get(
      "RATTR_ALL_OUTPUT"):
    sys.stdout = open(os.devnull, "w")
  return True

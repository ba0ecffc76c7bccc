"""`parallel.reserve_host_cores`: XLA's CPU pool and the Python thread on separate cores.

The pinning must happen before JAX starts, so the check that it does what it
says runs in a child process (this file is also that child's program,
`python tests/host_cores_test.py child`); the refusals run in this process,
where JAX has long started.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAN_PIN = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
needs_two_cores = pytest.mark.skipif(not CAN_PIN, reason="needs Linux and at least 2 cores")


def _thread_cores() -> dict[int, frozenset[int]]:
  """Thread id -> the cores it may run on, for every thread of this process."""
  cores = {}
  for task in glob.glob(f"/proc/{os.getpid()}/task/*"):
    tid = int(os.path.basename(task))
    with contextlib.suppress(OSError):  # the thread ended in between
      cores[tid] = frozenset(os.sched_getaffinity(tid))
  return cores


def _child() -> None:
  import numpy as np

  from metalearn import parallel

  before = frozenset(os.sched_getaffinity(0))
  compute, host = parallel.reserve_host_cores(1)
  import jax
  import jax.numpy as jnp

  assert compute | host == before and not compute & host and len(host) == 1, (compute, host)
  # A computation large enough for XLA to use its pool, with the right answer.
  a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
  out = np.asarray(jax.jit(lambda x: jnp.tanh(x @ x).sum(axis=0))(a))
  np.testing.assert_allclose(out, np.tanh(a @ a).sum(axis=0), rtol=1e-3, atol=1e-3)
  threads = _thread_cores()
  main = threads.pop(os.getpid())
  assert main == host, (main, host)
  assert compute in set(threads.values()), threads  # the backend's threads
  print("OK child", sorted(compute), sorted(host))


@needs_two_cores
def test_pool_and_python_thread_on_separate_cores():
  out = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "child"],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
  assert "OK child" in out.stdout


@needs_two_cores
def test_refused_after_jax_has_started():
  import jax

  from metalearn import parallel

  jax.devices()
  before = os.sched_getaffinity(0)
  with pytest.raises(RuntimeError, match="before JAX starts"):
    parallel.reserve_host_cores(1)
  assert os.sched_getaffinity(0) == before  # nothing was moved


@needs_two_cores
@pytest.mark.parametrize("num_host", [0, -1, "all", 1.5])
def test_bad_core_count_is_refused(num_host):
  from metalearn import parallel

  if num_host == "all":
    num_host = len(os.sched_getaffinity(0))
  with pytest.raises(ValueError, match="leave a core"):
    parallel.reserve_host_cores(num_host)


if __name__ == "__main__":
  if sys.argv[1:] != ["child"]:
    raise SystemExit("usage: python tests/host_cores_test.py child")
  _child()

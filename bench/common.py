"""Shared benchmark plumbing: environment banner, timing, peak memory.

Conventions (ENGINEERING.md, "Benchmarks"):

* every script prints the device, the jax/jaxlib/flax versions, the CPU
  count and the load average (the CPU is shared, so a number without its load
  is not interpretable);
* compile time is reported separately from run time (AOT `lower().compile()`
  where the code path allows it);
* run times are the median and p10/p90 of several timed reps after warm-up;
* peak memory is measured in a FRESH subprocess per workload: the parent
  starts `python <script> --worker '<json>'`, waits for it with `os.wait4`
  (which returns that child's own rusage, so ru_maxrss is the child's peak
  RSS and not the running maximum over every child reaped so far), and also
  reads the VmHWM the child reports from /proc/self/status. On an
  accelerator the child adds the device's `peak_bytes_in_use`.

A worker prints exactly one line `BENCH_RESULT <json>`; everything else it
prints is passed through to the parent's stderr for debugging.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

RESULT_TAG = 'BENCH_RESULT '
REPO = pathlib.Path(__file__).resolve().parents[1]
GIB = float(1 << 30)


def load_average() -> tuple[float, float, float]:
  """(1, 5, 15)-minute load averages; (nan, nan, nan) where unsupported."""
  try:
    return os.getloadavg()
  except OSError:
    return (float('nan'),) * 3


def environment() -> dict[str, Any]:
  """Device, library versions and machine state, as a JSON-able dict.

  Imports jax lazily so that the reference harness (a torch venv) can use the
  rest of this module without jax installed.
  """
  env: dict[str, Any] = {
      'date': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
      'python': platform.python_version(),
      'machine': platform.machine(),
      'cpu_count': os.cpu_count(),
      'affinity_cpus': (len(os.sched_getaffinity(0))
                        if hasattr(os, 'sched_getaffinity') else None),
      'loadavg': load_average(),
      'mem_total_gib': _meminfo_gib('MemTotal'),
      'mem_available_gib': _meminfo_gib('MemAvailable'),
  }
  try:
    import jax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top
    env['jax'] = jax.__version__
    env['jaxlib'] = jaxlib.__version__
    env['backend'] = jax.default_backend()
    env['devices'] = [str(d) for d in jax.devices()]
    env['device_kind'] = jax.devices()[0].device_kind
  except ImportError:
    pass
  for name in ('flax', 'optax', 'torch', 'numpy'):
    try:
      env[name] = __import__(name).__version__
    except ImportError:
      pass
  return env


def _proc_kib_field_gib(path: str, field: str) -> float | None:
  """A 'Field:  N kB' line of a /proc file, in GiB; None off Linux."""
  try:
    for line in pathlib.Path(path).read_text().splitlines():
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024 / GIB
  except OSError:
    pass
  return None


def _meminfo_gib(field: str) -> float | None:
  return _proc_kib_field_gib('/proc/meminfo', field)


def print_environment(env: dict[str, Any] | None = None,
                      file=sys.stdout) -> dict[str, Any]:
  """Prints the banner every bench script starts with; returns the dict."""
  env = env or environment()
  keys = ('date', 'backend', 'devices', 'device_kind', 'jax', 'jaxlib',
          'flax', 'optax', 'torch', 'numpy', 'python', 'cpu_count',
          'affinity_cpus', 'mem_total_gib', 'loadavg')
  parts = []
  for k in keys:
    if k in env and env[k] is not None:
      v = env[k]
      if isinstance(v, float):
        v = f'{v:.1f}'
      elif k == 'loadavg':
        v = '/'.join(f'{x:.2f}' for x in v)
      parts.append(f'{k}={v}')
  print('# ' + '  '.join(parts), file=file, flush=True)
  return env


def summarize(times: Sequence[float]) -> dict[str, float]:
  """median / p10 / p90 / min / n of a list of seconds."""
  t = np.asarray(times, dtype=np.float64)
  if t.size == 0:
    return {'n': 0, 'median': float('nan'), 'p10': float('nan'),
            'p90': float('nan'), 'min': float('nan')}
  p10, p50, p90 = np.percentile(t, [10, 50, 90])
  return {'n': int(t.size), 'median': float(p50), 'p10': float(p10),
          'p90': float(p90), 'min': float(t.min())}


def fmt_stats(s: dict[str, float], unit: str = 's', scale: float = 1.0,
              digits: int = 3) -> str:
  """'median [p10, p90] unit (n=..)'."""
  if not s or s.get('n', 0) == 0:
    return 'n/a'
  f = lambda x: f'{x * scale:.{digits}g}'
  return (f"{f(s['median'])} [{f(s['p10'])}, {f(s['p90'])}] {unit} "
          f"(n={s['n']})")


def block(x: Any) -> Any:
  """jax.block_until_ready without importing jax at module import time."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Seconds for one call, waiting for asynchronous results."""
  t0 = time.perf_counter()
  out = block(fn())
  return time.perf_counter() - t0, out


def time_reps(fn: Callable[[], Any], *, warmup: int, reps: int
              ) -> tuple[list[float], Any]:
  """`warmup` untimed calls, then `reps` timed calls; returns (times, last)."""
  out = None
  for _ in range(warmup):
    out = block(fn())
  times = []
  for _ in range(reps):
    dt, out = time_call(fn)
    times.append(dt)
  return times, out


def time_interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int,
                     reps: int) -> dict[str, list[float]]:
  """Runs every variant `reps` times per round, rounds interleaved.

  Shared CPUs drift (other jobs start and stop); interleaving spreads that
  drift over all variants instead of biasing whichever ran last.
  """
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(reps):
        times[name].append(time_call(fn)[0])
  return times


def _proc_status_gib(field: str) -> float | None:
  return _proc_kib_field_gib('/proc/self/status', field)


def vm_hwm_gib() -> float | None:
  """This process's peak RSS (VmHWM) from /proc; None off Linux."""
  return _proc_status_gib('VmHWM')


def vm_rss_gib() -> float | None:
  """This process's current RSS; workers record it after start-up so that
  the runtime's own footprint can be told apart from the workload's."""
  return _proc_status_gib('VmRSS')


def device_peak_gib() -> float | None:
  """Peak bytes in use on the default accelerator (None on CPU)."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / GIB


def emit_result(result: dict[str, Any]) -> None:
  """Worker side: adds the memory peaks and prints the one result line."""
  result = dict(result)
  result['vm_hwm_gib'] = vm_hwm_gib()
  result['device_peak_gib'] = device_peak_gib()
  print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(argv: Sequence[str], *, cwd: str | os.PathLike | None = None,
               env: dict[str, str] | None = None,
               timeout_s: float | None = None,
               echo: bool = False) -> dict[str, Any]:
  """Runs one workload in a fresh process and measures its peak RSS.

  Args:
    argv: the child's command line; it must print one `BENCH_RESULT` line.
    cwd: working directory of the child.
    env: environment of the child (default: this process's).
    timeout_s: kill the child after this many seconds.
    echo: copy the child's output to stderr as well.

  Returns:
    The child's result dict plus 'peak_rss_gib' (ru_maxrss of exactly this
    child, from wait4), 'wall_s', 'returncode', 'loadavg_before' and
    'loadavg_after'. If the child failed, 'error' holds the tail of its
    output and the timing fields are absent.
  """
  load_before = load_average()
  with tempfile.TemporaryFile(mode='w+') as out:
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = None if timeout_s is None else t0 + timeout_s
    rusage = None
    status = 0
    while True:
      pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
      if pid == proc.pid:
        break
      if deadline is not None and time.perf_counter() > deadline:
        proc.kill()
        _, status, rusage = os.wait4(proc.pid, 0)
        break
      time.sleep(0.05)
    wall = time.perf_counter() - t0
    # os.wait4 reaped the child; tell Popen so it does not wait again.
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read()
  if echo:
    sys.stderr.write(text)
  result: dict[str, Any] = {}
  for line in text.splitlines():
    if line.startswith(RESULT_TAG):
      result = json.loads(line[len(RESULT_TAG):])
  # ru_maxrss is in KiB on Linux.
  result['peak_rss_gib'] = rusage.ru_maxrss * 1024 / GIB if rusage else None
  result['wall_s'] = wall
  result['returncode'] = proc.returncode
  result['loadavg_before'] = load_before
  result['loadavg_after'] = load_average()
  if proc.returncode != 0 or RESULT_TAG not in text:
    result['error'] = text[-4000:]
  return result


def self_worker_argv(script: str | os.PathLike, spec: dict[str, Any]
                     ) -> list[str]:
  """`python <script> --worker <json>` with this interpreter."""
  return [sys.executable, str(script), '--worker', json.dumps(spec)]


def default_out_dir() -> pathlib.Path:
  """$OUT on the device machine, else bench/out (git-ignored by intent)."""
  return pathlib.Path(os.environ.get('OUT') or REPO / 'bench' / 'out')


def write_json(path: str | os.PathLike, payload: Any) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=1, default=str) + '\n')


def ensure_repo_on_path() -> None:
  """Lets `python bench/x.py` import mentor_jax, data_prep and configs."""
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

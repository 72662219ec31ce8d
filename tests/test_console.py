"""The console as a person sees it: the trainer run in a pseudo-terminal
from another folder, the start-up block, the bar, no backend-probe noise;
config names and data paths that work from anywhere."""

import errno
import json
import logging
import os
import pathlib
import pty
import re
import select
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from mentor_jax import console
from mentor_jax import datasets
from mentor_jax import main as main_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_in_pty(argv, cwd, env, timeout=300.0) -> tuple[int, str]:
  """Runs `argv` with stdin/stdout/stderr on a pseudo-terminal."""
  leader, follower = pty.openpty()
  proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=follower,
                          stdout=follower, stderr=follower, close_fds=True)
  os.close(follower)
  chunks, deadline = [], time.monotonic() + timeout
  try:
    while time.monotonic() < deadline:
      ready, _, _ = select.select([leader], [], [], 1.0)
      if ready:
        try:
          data = os.read(leader, 65536)
        except OSError as e:  # EIO: the child closed the terminal.
          if e.errno != errno.EIO:
            raise
          break
        if not data:
          break
        chunks.append(data)
      elif proc.poll() is not None:
        break
  finally:
    os.close(leader)
  rc = proc.wait(timeout=60)
  return rc, b''.join(chunks).decode('utf-8', 'replace')


def _screen(raw: str) -> list[str]:
  """The lines a terminal would show: '\\r' returns, ESC[K erases."""
  lines, line = [], ''
  for piece in re.split(r'(\r\n|\n|\r|\x1b\[K)', raw):
    if piece in ('\r\n', '\n'):
      lines.append(line)
      line = ''
    elif piece == '\r':
      line = ''  # The next text overwrites from column 0 ...
    elif piece == '\x1b[K':
      pass  # ... and erases the rest: what was drawn is gone.
    else:
      line += piece
  return lines + ([line] if line else [])


def test_training_in_a_terminal_from_another_folder(data_root, tmp_path):
  cwd = tmp_path / 'elsewhere'
  cwd.mkdir()
  env = dict(os.environ, MENTOR_DATA_ROOT=str(data_root), COLUMNS='120')
  env.pop('JAX_PLATFORMS', None)
  argv = [sys.executable, '-m', 'mentor_jax.train',
          f'--config={REPO / "configs" / "tiny.py"}', '--workdir', 'run',
          '--config.epochs=2', '--config.train_batch_size=16']
  rc, raw = _run_in_pty(argv, cwd, env)
  assert rc == 0, raw
  assert 'Unable to initialize backend' not in raw
  assert 'Traceback' not in raw
  # The bar was drawn in place, counting up to every step of each epoch.
  n_steps = 23  # ceil(357 training rows / 16)
  for epoch in (0, 1):
    counts = [int(c) for c in re.findall(
        rf'\repoch {epoch}/1 \[[#-]+\] (\d+)/{n_steps} ', raw)]
    assert counts and counts[-1] == n_steps, raw
    assert counts == sorted(counts)
  screen = _screen(raw)
  # Erased once complete: what stays is the block and the epoch lines.
  assert not any(re.search(r'\[[#-]{5,}\]', line) for line in screen), screen
  text = '\n'.join(screen)
  for expected in ('device    1 x ', 'users', 'parameters',
                   f'epoch     {n_steps} steps of 16 rows',
                   'memory    estimated peak', 'epoch 0/1  train',
                   'epoch 1/1  train', 'best epoch'):
    assert expected in text, (expected, text)
  # Data from MENTOR_DATA_ROOT, outputs in the working folder.
  assert not (cwd / 'data').exists()
  assert (cwd / 'run' / 'result.json').exists()
  config = json.loads((cwd / 'run' / 'config.json').read_text())
  assert config['data_npz'] == 'data/tiny.npz'


def test_a_stack_in_a_terminal_shows_what_a_single_run_shows(data_root,
                                                             tmp_path):
  # Two seeds as one program: the start-up block (with compile time and
  # XLA's memory estimate), the bar, the epoch lines of both runs, and
  # TensorBoard events in each run's folder.
  env = dict(os.environ, MENTOR_DATA_ROOT=str(data_root), COLUMNS='120')
  env.pop('JAX_PLATFORMS', None)
  argv = [sys.executable, '-m', 'mentor_jax.train',
          '--config=configs/tiny.py:lightgcn', '--workdir',
          str(tmp_path / 'run'), '--config.epochs=2',
          '--config.train_batch_size=16', "--config.seeds=(0,1)"]
  rc, raw = _run_in_pty(argv, REPO, env)
  assert rc == 0, raw
  n_steps = 23
  for epoch in (0, 1):
    counts = re.findall(rf'\repoch {epoch}/1 \[[#-]+\] (\d+)/{n_steps} ',
                        raw)
    assert counts and int(counts[-1]) == n_steps, raw
  text = '\n'.join(_screen(raw))
  for expected in ('model     lightgcn x 2 runs', 'memory    estimated peak',
                   'compiled  in', 'epoch 0/1  train', 'run 0 (seed 0): loss',
                   'run 1 (seed 1): loss', 'epoch 1/1  train'):
    assert expected in text, (expected, text)
  from mentor_jax import events  # pylint: disable=g-import-not-at-top
  for k in (0, 1):
    run = tmp_path / 'run' / 'runs' / str(k)
    assert events.event_files(run), run
    assert not events.event_files(tmp_path / 'run')  # Per run, not mixed.


def test_a_model_override_is_refused_with_the_command_to_use():
  tiny_path = str(REPO / 'configs' / 'tiny.py')
  argv = ['mentor-train', '--config', 'configs/tiny.py', '--workdir', 'w',
          '--config.model=lightgcn', '--config.epochs=5']
  error = main_lib.model_override_error(tiny_path, {'model': 'lightgcn',
                                                    'epochs': 5}, argv)
  assert "built this config for model 'mentor'" in str(error)
  assert str(error).endswith('mentor-train --config configs/tiny.py:lightgcn '
                             '--workdir w --config.epochs=5')
  # The model it was built for, or no model override: nothing to refuse.
  assert main_lib.model_override_error(tiny_path, {'model': 'mentor'},
                                       argv) is None
  assert main_lib.model_override_error(tiny_path, {'epochs': 5}, argv) is None
  # configs/baseline.py:MODEL,DATASET keeps its dataset.
  error = main_lib.model_override_error(
      str(REPO / 'configs' / 'baseline.py') + ':freedom,tiktok',
      {'model': 'vbpr'},
      ['x', '--config=configs/baseline.py:freedom,tiktok',
       '--config.model', 'vbpr'])
  assert str(error).endswith('x --config=configs/baseline.py:vbpr,tiktok')
  # A config of MENTOR's only says so.
  error = main_lib.model_override_error(
      str(REPO / 'configs' / 'paper.py') + ':tiny', {'model': 'bm3'}, [])
  assert "builds 'mentor' configs only" in str(error)


def test_the_command_to_use_is_one_a_user_can_type():
  package = REPO / 'mentor_jax'
  assert (main_lib.command_name(str(package / 'train.py'))
          == 'python -m mentor_jax.train')
  assert main_lib.command_name('/elsewhere/my run.py') == (
      "python '/elsewhere/my run.py'")
  script = pathlib.Path(sys.executable).parent / 'mentor-train'
  if script.exists() and shutil.which('mentor-train') == str(script):
    assert main_lib.command_name(str(script)) == 'mentor-train'
  # Not on the PATH: as typed.
  assert main_lib.command_name('/no/such/bin/mentor-train') == (
      '/no/such/bin/mentor-train')


def test_the_cli_refuses_a_model_override_in_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'mentor_jax.train', '--config',
       'configs/tiny.py', '--workdir', str(tmp_path / 'w'),
       '--config.model=mfbpr'], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 2, done.stderr
  errors_ = [l for l in done.stderr.splitlines() if 'error:' in l]
  assert errors_ and 'configs/tiny.py:mfbpr' in done.stderr, done.stderr
  # The command as it can be typed again (argv[0] is the module's file).
  assert ('python -m mentor_jax.train --config configs/tiny.py:mfbpr'
          in done.stderr), done.stderr
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'w').exists()


def test_installed_entry_point_with_a_config_name(data_root, tmp_path):
  script = pathlib.Path(sys.executable).parent / 'mentor-train'
  if not script.exists():
    pytest.skip(f'{script} not installed (pip install -e .)')
  env = dict(os.environ, MENTOR_DATA_ROOT=str(data_root))
  done = subprocess.run(
      [str(script), '--config', 'tiny', '--workdir', 'run',
       '--config.epochs=1'], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  # Not a terminal: no bar drawing, plain lines only.
  assert '\r' not in done.stderr and '\x1b' not in done.stderr
  assert 'epoch 0/0  train' in done.stderr
  assert 'Unable to initialize backend' not in done.stderr
  assert (tmp_path / 'run' / 'result.json').exists()


def test_config_names_resolve_to_the_shipped_configs(tmp_path):
  shipped = main_lib.CONFIG_DIR
  assert (shipped / 'small.py').is_file()
  for name in ('small', 'small.py', 'configs/small.py'):
    assert main_lib.shipped_config(name) == shipped / 'small.py'
  assert main_lib.shipped_config('nope') is None
  got = main_lib.resolve_config_arg(
      ['x', '--config', 'baseline.py:lightgcn,baby', '--workdir', 'w'])
  assert got == ['x', '--config', f'{shipped}/baseline.py:lightgcn,baby',
                 '--workdir', 'w']
  assert main_lib.resolve_config_arg(['x', '--config=tiny']) == [
      'x', f'--config={shipped}/tiny.py']
  # A file that exists wins over a shipped name; unknown names stay as
  # they are for the flag to report.
  own = tmp_path / 'tiny.py'
  own.write_text('')
  assert main_lib.resolve_config_arg(['x', f'--config={own}']) == [
      'x', f'--config={own}']
  assert main_lib.resolve_config_arg(['x', '--config', 'nope']) == [
      'x', '--config', 'nope']


def test_data_paths_resolve_against_the_data_root(tmp_path, monkeypatch):
  monkeypatch.delenv(datasets.DATA_ROOT_ENV, raising=False)
  monkeypatch.chdir(tmp_path)
  assert datasets.resolve_data_path('data/x.npz') == tmp_path / 'data/x.npz'
  monkeypatch.setenv(datasets.DATA_ROOT_ENV, '/srv/d')
  assert datasets.resolve_data_path('data/x.npz') == pathlib.Path(
      '/srv/d/data/x.npz')
  assert datasets.resolve_data_path('/abs/x.npz') == pathlib.Path(
      '/abs/x.npz')


def test_only_the_backend_probe_is_filtered():
  logger = logging.getLogger('jax._src.xla_bridge')
  filters = [f for f in logger.filters
             if isinstance(f, console._DropBackendProbe)]  # pylint: disable=protected-access
  assert len(filters) == 1  # Installed by importing mentor_jax.

  def record(level, msg):
    return logging.LogRecord('jax._src.xla_bridge', level, 'f', 1, msg,
                             None, None)

  probe = "Unable to initialize backend 'tpu': INTERNAL: no libtpu.so"
  assert not filters[0].filter(record(logging.INFO, probe))
  assert filters[0].filter(record(logging.WARNING, probe))
  assert filters[0].filter(record(logging.INFO, 'other news'))


def test_memory_estimate_counts_arguments_and_donation():
  x = jnp.ones((256, 256), jnp.float32)
  compiled = jax.jit(lambda a: a * 2.0, donate_argnums=0).lower(x).compile()
  got = console.peak_memory_bytes(compiled)
  if got is None:
    pytest.skip('this backend has no memory analysis')
  assert got['argument'] == x.nbytes == 256 * 256 * 4
  # The output lives in the donated input: one buffer, not two.
  assert got['alias'] == x.nbytes
  assert got['peak'] == x.nbytes + got['temp']
  kept = console.peak_memory_bytes(jax.jit(lambda a: a * 2.0).lower(
      x).compile())
  assert kept['peak'] == 2 * x.nbytes + kept['temp']
  assert console.peak_memory_bytes(object()) is None

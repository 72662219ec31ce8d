"""Every command's arguments, swept with values of the wrong type, range or
encoding (issue 28): the command either does its job (exit 0) or refuses
with exit status 2 (usage, settings) or 3 (input data) and one line that
says `error:`, never a traceback.

evaluate, recommend, report and data_prep run in this process (their
`main(argv)`); train and grid parse absl flags once per process, so they
run as subprocesses, a few seeded examples each.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import pathlib
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from configs import tiny
from data_prep import __main__ as data_prep_cli
from mentor_jax import evaluate
from mentor_jax import recommend
from mentor_jax import report
from mentor_jax import train
from mentor_jax.serving import export

REPO = pathlib.Path(__file__).resolve().parents[1]

# Values a user (or a script) might pass by mistake: text for numbers,
# numbers out of range, non-ASCII digits, a lone surrogate (how Python
# hands over command-line bytes that are not UTF-8), empty and huge ones.
BAD_VALUES = ('abc', '', ' ', '-1', '0', '1.5', '1e3', '0x10', 'nan', 'inf',
              '-0', '9' * 40, '٣', '３', '\udcff', '1,2', '[1]',
              '(2,)', 'None', 'True', '/', '..', '~', '%s', '-5')
# (No NUL: a command line cannot hold one.)
VALUE = st.one_of(st.sampled_from(BAD_VALUES),
                  st.text(max_size=12).filter(lambda t: '\x00' not in t))
# derandomize: the same examples in every run (CI never meets a new one by
# chance); widen max_examples locally to explore.
SWEEP = settings(max_examples=25, deadline=None, database=None,
                 derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@pytest.fixture(scope='module')
def finished_stack(tiny_dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep_stack')
  config = tiny.get_config('lightgcn')
  config.data_npz = str(tiny_dataset)
  config.seeds = (0, 1)
  config.epochs = 2
  train.train_and_evaluate(config, workdir)
  return workdir


def _status(main, argv) -> tuple[int, str]:
  # A StringIO, not capsys: a real stderr writes a lone surrogate (a path
  # that is not UTF-8) with backslashreplace, capsys's stream refuses it.
  err = io.StringIO()
  with (contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO())):
    try:
      status = main(argv)
    except SystemExit as e:  # argparse's usage errors
      status = e.code
  return status, err.getvalue()


def _check(status: int, err: str, argv) -> None:
  assert 'Traceback' not in err, (argv, err)
  if status == 0:
    return
  assert status in (2, 3), (argv, status, err)
  lines = [l for l in err.splitlines() if 'error:' in l]
  assert len(lines) == 1, (argv, err)


def _swap(argv: list[str], flag: str, value: str) -> list[str]:
  """`argv` with `flag`'s value replaced (or the flag added)."""
  out = list(argv)
  if flag in out:
    out[out.index(flag) + 1] = value
  else:
    out += [flag, value]
  return out


_COUNT = itertools.count()


def _out_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  # Fresh per example: an output written by one example must not make the
  # next one refuse to overwrite it for another reason.
  out = tmp_path / f'out{next(_COUNT)}'
  out.mkdir()
  return out


@given(flag=st.sampled_from(['--run', '--embeddings', '--data-npz',
                             '--json-out']), value=VALUE)
@SWEEP
def test_evaluate_arguments(finished_stack, tmp_path, flag, value):
  argv = ['--workdir', str(finished_stack), '--run', '1']
  if flag == '--json-out':
    value = str(_out_dir(tmp_path) / value) if value else value
  argv = _swap(argv, flag, value)
  _check(*_status(evaluate.main, argv), argv)


@given(flag=st.sampled_from(['--run', '--users', '--users-file', '--k',
                             '--embeddings', '--out']), value=VALUE)
@SWEEP
def test_recommend_arguments(finished_stack, tmp_path, flag, value):
  argv = ['--workdir', str(finished_stack), '--run', '1', '--k', '3']
  if flag != '--users-file':
    argv += ['--users', '0,1']
  else:
    path = _out_dir(tmp_path) / 'users.txt'
    path.write_bytes(value.encode('utf-8', 'surrogateescape'))
    value = str(path)
  if flag == '--out':
    value = str(_out_dir(tmp_path) / value) if value else value
  argv = _swap(argv, flag, value)
  _check(*_status(recommend.main, argv), argv)


@given(flag=st.sampled_from(['--run', '--embeddings', '--out', '--id-maps',
                             '--new-items']), value=VALUE)
@SWEEP
def test_export_arguments(finished_stack, tmp_path, flag, value):
  out = _out_dir(tmp_path)
  argv = ['--workdir', str(finished_stack), '--run', '1', '--out',
          str(out / 'export')]
  if flag == '--out':
    value = str(out / value) if value else value
  argv = _swap(argv, flag, value)
  _check(*_status(export.main, argv), argv)


@given(flag=st.sampled_from(['--split', '--title', '--notes', '--out',
                             '--png']), value=VALUE)
@SWEEP
def test_report_arguments(finished_stack, tmp_path, flag, value):
  out = _out_dir(tmp_path)
  argv = [str(finished_stack), '--out', str(out / 'r.md'), '--no-png']
  if flag == '--notes':
    path = out / 'notes.md'
    path.write_bytes(value.encode('utf-8', 'surrogateescape'))
    value = str(path)
  if flag in ('--out', '--png') and value:
    value = str(out / value)
  if flag == '--png':
    argv.remove('--no-png')
  argv = _swap(argv, flag, value)
  _check(*_status(report.main, argv), argv)


@given(flag=st.sampled_from(['--knn-k', '--synth-features', '--synth-dims',
                             '--name', '--v-feat', '--inter']), value=VALUE)
@SWEEP
def test_data_prep_convert_arguments(tiny_dataset, tmp_path, flag, value):
  src = tiny_dataset.parent / 'tiny'  # conftest's MMRec folder
  out = _out_dir(tmp_path) / 'x.npz'
  argv = ['convert', '--src', str(src), '--out', str(out)]
  if flag == '--synth-dims':
    argv += [flag, value, '8']
  else:
    argv = _swap(argv, flag, value)
  _check(*_status(data_prep_cli.main, argv), argv)


@given(flag=st.sampled_from(['--users', '--items', '--interactions',
                             '--dim-v', '--seed', '--preset', '--scale',
                             '--knn-k', '--name']), value=VALUE)
@SWEEP
def test_data_prep_synth_arguments(tmp_path, flag, value):
  out = _out_dir(tmp_path)
  argv = ['synth', '--preset', 'tiny', '--out', str(out / 't'), '--npz',
          str(out / 't.npz')]
  argv = _swap(argv, flag, value)
  _check(*_status(data_prep_cli.main, argv), argv)


@given(flag=st.sampled_from(['--kcore', '--min-rating', '--seed', '--sep',
                             '--split', '--format', '--user-column',
                             '--name']), value=VALUE)
@SWEEP
def test_data_prep_import_arguments(tiny_dataset, tmp_path, flag, value):
  src = tiny_dataset.parent / 'tiny' / 'tiny.inter'
  argv = ['import', '--format', 'mmrec', '--src', str(src), '--out',
          str(_out_dir(tmp_path) / 'o'), '--name', 't', '--kcore', '0']
  argv = _swap(argv, flag, value)
  _check(*_status(data_prep_cli.main, argv), argv)


# --- train and grid: absl flags, one process per example ---------------------


def _train_like(module: str, args: list[str], cwd: pathlib.Path, env):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd,
                        env=env, capture_output=True, timeout=300)


@pytest.mark.parametrize('module', ['mentor_jax.train', 'mentor_jax.grid'])
def test_train_and_grid_settings(module, data_root, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO),
             MENTOR_DATA_ROOT=str(data_root))
  keys = ['epochs', 'learning_rate', 'seed', 'seeds', 'topk', 'temp',
          'train_batch_size', 'mesh_shape', 'valid_metric', 'sweep',
          'stopping_step', 'eval_embeddings']
  rng = random.Random(f'{module}-sweep')
  for _ in range(2):
    key = rng.choice(keys)
    value = rng.choice(BAD_VALUES)
    args = ['--config', 'tiny', '--workdir', 'w', f'--config.{key}={value}',
            '--config.epochs=1'] if key != 'epochs' else [
                '--config', 'tiny', '--workdir', 'w',
                f'--config.{key}={value}']
    if module == 'mentor_jax.grid':
      args += ['--grid', 'temp=0.2,0.4']
    done = _train_like(module, args, tmp_path, env)
    err = done.stderr.decode('utf-8', 'replace')
    with contextlib.suppress(FileNotFoundError):
      for p in sorted((tmp_path / 'w').rglob('*'), reverse=True):
        p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    _check(done.returncode, err, args)


def test_an_output_in_a_missing_folder_is_written_there(finished_stack,
                                                        tmp_path):
  # Found by the sweep: --json-out DIR/0/0 with DIR/0 missing was exit 1
  # naming the temporary file.
  out = tmp_path / 'new' / 'deeper' / 'm.json'
  status, err = _status(evaluate.main, ['--workdir', str(finished_stack),
                                        '--run', '1', '--json-out', str(out)])
  assert status == 0, err
  assert out.is_file()
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  status, err = _status(evaluate.main, [
      '--workdir', str(finished_stack), '--run', '1', '--json-out',
      str(blocker / 'm.json')])
  _check(status, err, 'file as folder')
  assert status == 2 and f'{blocker} is a file, not a folder' in err

"""Fault injection (issue 12 §1): the workdir survives faults.

Each test plants one fault that was seen in the field and checks that the
run recovers by itself, or stops with one clear message and nothing left
behind that blocks the next run.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from data_prep import convert
from data_prep import synthetic
from mentor_jax import checkpointing
from mentor_jax import errors
from mentor_jax import evaluate
from mentor_jax import train
from mentor_jax import workdir as workdir_lib
from mentor_jax import rundirs

REPO = pathlib.Path(__file__).resolve().parents[1]
N_EPOCHS = 3


def make_config(npz, **overrides):
  config = tiny.get_config()
  config.data_npz = str(npz)
  config.epochs = N_EPOCHS
  for k, v in overrides.items():
    config[k] = v
  return config


def logged(workdir):
  return [(r['epoch'], r['loss'], r['valid']) for r in
          rundirs.read_metrics(workdir)]


@pytest.fixture(scope='module')
def straight(tiny_dataset, tmp_path_factory):
  """(workdir, result) of an uninterrupted N_EPOCHS run."""
  workdir = tmp_path_factory.mktemp('straight')
  return workdir, train.train_and_evaluate(make_config(tiny_dataset), workdir)


@pytest.fixture(scope='module')
def two_epochs(tiny_dataset, tmp_path_factory):
  """A workdir trained for 2 of the N_EPOCHS epochs (latest steps 0, 1)."""
  workdir = tmp_path_factory.mktemp('two')
  train.train_and_evaluate(make_config(tiny_dataset, epochs=2), workdir)
  return workdir


def copy_run(src, tmp_path):
  dst = tmp_path / 'run'
  shutil.copytree(src, dst)
  return dst


def test_half_written_metrics_line_then_resume(tiny_dataset, tmp_path,
                                               two_epochs, straight):
  workdir = copy_run(two_epochs, tmp_path)
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"epoch": 2, "step": 18, "loss": {"bp')  # A full disk cut it.
  assert len(rundirs.read_metrics(workdir)) == 2  # Readers skip it.
  result = train.train_and_evaluate(make_config(tiny_dataset), workdir)
  assert result == straight[1]
  # The cut line is gone and the log is the uninterrupted run's.
  assert logged(workdir) == logged(straight[0])
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    json.loads(line)


def _break_meta(step_dir):
  (step_dir / 'meta' / 'metadata').write_text('{"epoch": 1, "step"')


def _truncate_arrays(step_dir):
  files = sorted((p for p in (step_dir / 'params').rglob('*')
                  if p.is_file() and p.stat().st_size > 0),
                 key=lambda p: -p.stat().st_size)
  with open(files[0], 'r+b') as f:
    f.truncate(files[0].stat().st_size // 2)


def _empty_folder(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


@pytest.mark.parametrize('damage', [_break_meta, _truncate_arrays,
                                    _empty_folder],
                         ids=['broken_meta_json', 'truncated_arrays',
                              'empty_step_folder'])
def test_damaged_newest_checkpoint_falls_back(tiny_dataset, tmp_path,
                                              two_epochs, straight, damage,
                                              caplog):
  workdir = copy_run(two_epochs, tmp_path)
  newest = workdir / 'checkpoints' / 'latest' / '1'
  assert newest.is_dir()
  damage(newest)
  with caplog.at_level('WARNING'):
    result = train.train_and_evaluate(make_config(tiny_dataset), workdir)
  # Resumed from epoch 0 and replayed 1 and 2: the uninterrupted result.
  assert result == straight[1]
  assert logged(workdir) == logged(straight[0])
  assert (workdir / 'checkpoints' / 'latest' / '1.damaged').exists()
  assert any('skipped checkpoint' in r.getMessage() and '/latest/1' in
             r.getMessage() for r in caplog.records)


def test_second_trainer_on_one_workdir_is_refused(tiny_dataset, tmp_path):
  # Another process holds the workdir (as a running trainer does).
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import sys, time; from mentor_jax import workdir; '
       f'workdir.Lock({str(tmp_path)!r}).acquire(); print("ready", '
       'flush=True); time.sleep(60)'],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'ready'
    with pytest.raises(errors.WorkdirBusyError,
                       match=f'process id {holder.pid} on'):
      train.train_and_evaluate(make_config(tiny_dataset), tmp_path)
  finally:
    holder.kill()
    holder.wait()
  # The holder's death released the lock: no stale lock file blocks a run.
  with workdir_lib.Lock(tmp_path):
    pass


def _train_cli(workdir, npz, *, fsize_limit=None, precheck=True,
               timeout=300):
  # The limit is set in the child itself (not with preexec_fn: forking a
  # process that runs JAX's threads can deadlock). Past the limit write()
  # fails with EFBIG instead of the process being killed by SIGXFSZ.
  # Without the space check before each save, the disk "fills" in the
  # middle of Orbax's writes.
  launcher = ('import resource, runpy, signal, sys\n'
              'limit = int(sys.argv.pop(1))\n'
              'if sys.argv.pop(1) == "0":\n'
              '  from mentor_jax import checkpointing\n'
              '  checkpointing.check_space = lambda *a, **k: None\n'
              'if limit > 0:\n'
              '  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
              '  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n'
              "runpy.run_module('mentor_jax.train', run_name='__main__')\n")
  return subprocess.run(
      [sys.executable, '-c', launcher, str(fsize_limit or 0),
       str(int(precheck)),
       '--config', str(REPO / 'configs' / 'tiny.py'), '--workdir',
       str(workdir), f'--config.data_npz={npz}', '--config.epochs=2'],
      cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_disk_full_gives_one_message_then_resumes(tiny_dataset, tmp_path):
  workdir = tmp_path / 'run'
  # Room for the logs, not for a checkpoint (~2 MB).
  full = _train_cli(workdir, tiny_dataset, fsize_limit=200_000)
  assert full.returncode == errors.StorageError.exit_code, full.stderr[-2000:]
  errors_printed = [l for l in full.stderr.splitlines()
                    if l.startswith('error:')]
  assert len(errors_printed) == 1
  assert 'no space left writing' in errors_printed[0]
  assert str(workdir / 'checkpoints') in errors_printed[0]
  assert 'Traceback' not in full.stderr
  # With space again, the same command finishes the run.
  again = _train_cli(workdir, tiny_dataset)
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads((workdir / 'result.json').read_text())['best_epoch'] >= 0


def test_disk_full_in_the_middle_of_a_save_is_one_line(tiny_dataset,
                                                       tmp_path):
  # Orbax's writer threads fail one by one (each logged with a traceback,
  # and tensorstore's callbacks after its loop closed): none of it shows.
  full = _train_cli(tmp_path / 'run', tiny_dataset, fsize_limit=100_000,
                    precheck=False)
  assert full.returncode == errors.StorageError.exit_code, full.stderr[-2000:]
  lines = full.stderr.splitlines()
  assert [l for l in lines if l.startswith('error:')] == [lines[-1]]
  assert 'File too large' in lines[-1]
  assert 'Traceback' not in full.stderr and 'ERROR' not in full.stderr, (
      full.stderr[-3000:])


def test_kill_between_best_and_latest_save_keeps_the_named_best(
    tiny_dataset, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  config = make_config(tiny_dataset, epochs=6)
  real_save = checkpointing.Checkpointer.save_latest
  killed_at = []

  def save_latest(self, epoch, *args):
    best = self.best.all_steps()
    if epoch >= 2 and best and max(best) == epoch:
      killed_at.append(epoch)
      raise KeyboardInterrupt  # The process dies after the best save.
    return real_save(self, epoch, *args)

  monkeypatch.setattr(checkpointing.Checkpointer, 'save_latest', save_latest)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert killed_at, 'no epoch >= 2 improved; the fault was not planted'
  # Resuming from the older latest step replays the killed epoch; every
  # best the run names at any point must still exist.
  result = train.train_and_evaluate(config, workdir)
  best = result['best_epoch']
  assert (workdir / 'checkpoints' / 'best' / str(best)).is_dir()
  restored = evaluate.load(workdir)
  assert restored.epoch == best
  out = evaluate.evaluate(restored)
  np.testing.assert_allclose(out['test']['recall@20'],
                             result['test']['recall@20'], rtol=1e-6)


def test_evaluate_while_training_runs(tiny_dataset, tmp_path):
  workdir = tmp_path / 'run'
  trainer = subprocess.Popen(
      [sys.executable, '-m', 'mentor_jax.train',
       '--config', str(REPO / 'configs' / 'tiny.py'), '--workdir',
       str(workdir), f'--config.data_npz={tiny_dataset}',
       '--config.epochs=25', '--config.stopping_step=100'],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  reads, deadline = [], time.time() + 600
  try:
    while trainer.poll() is None and time.time() < deadline:
      try:
        reads.append(evaluate.load(workdir, with_scores=True).epoch)
      except errors.CheckpointError as e:
        # Before the first best checkpoint exists.
        assert 'no checkpoint in' in str(e), e
  finally:
    trainer.kill() if trainer.poll() is None else None
    _, stderr = trainer.communicate()
  assert trainer.returncode == 0, stderr[-2000:]
  # Reads went on while the trainer replaced best steps under them.
  assert len(reads) >= 3 and len(set(reads)) >= 2, reads


@pytest.fixture(scope='module')
def other_tiny_dataset(tmp_path_factory):
  """The tiny preset drawn with another seed: same shapes, other data."""
  folder = tmp_path_factory.mktemp('other') / 'tiny'
  synthetic.generate(synthetic.PRESETS['tiny'], folder, seed=1)
  out = folder.parent / 'tiny.npz'
  convert.convert(folder, out)
  return out


def test_resume_on_other_data_is_refused_unless_asked(
    two_epochs, other_tiny_dataset, tmp_path):
  workdir = copy_run(two_epochs, tmp_path)
  config_json = (workdir / 'config.json').read_text()
  config = make_config(other_tiny_dataset)
  with pytest.raises(errors.CheckpointError,
                     match='(?s)data_sha256.*resume_other_data=True'):
    train.train_and_evaluate(config, workdir)
  # The refused resume did not touch the run's record of its settings.
  assert (workdir / 'config.json').read_text() == config_json
  config.resume_other_data = True
  result = train.train_and_evaluate(config, workdir)
  assert result['epochs_run'] == N_EPOCHS


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
  path = tmp_path / 'result.json'
  workdir_lib.write_json_atomic(path, {'a': 1})
  real_fsync = os.fsync

  def failing_fsync(fd):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'fsync', failing_fsync)
  with pytest.raises(errors.StorageError, match='no space left writing'):
    workdir_lib.write_json_atomic(path, {'a': 2})
  monkeypatch.setattr(os, 'fsync', real_fsync)
  assert json.loads(path.read_text()) == {'a': 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['result.json']


def test_output_files_are_never_overwritten_unasked(tmp_path):
  path = tmp_path / 'mine.json'
  path.write_text('user data')
  with pytest.raises(errors.OutputExistsError, match='--overwrite'):
    workdir_lib.write_output(path, 'new')
  assert path.read_text() == 'user data'
  workdir_lib.write_output(path, 'new', overwrite=True)
  assert path.read_text() == 'new'
  with pytest.raises(errors.OutputExistsError, match='folder'):
    workdir_lib.write_output(tmp_path, 'x', overwrite=True)


def _grid_cmd(workdir, npz):
  return [sys.executable, '-m', 'mentor_jax.grid', '--config',
          'configs/tiny.py:lightgcn', f'--workdir={workdir}', '--nostack',
          '--grid', 'reg_weight=0.001,0.01', '--config.epochs=6',
          f'--config.data_npz={npz}']


def _kill_when(proc, metrics: pathlib.Path, min_lines: int, timeout=300):
  """SIGKILL `proc` once `metrics` has `min_lines` epochs logged."""
  deadline = time.monotonic() + timeout
  while not (metrics.is_file() and
             metrics.read_text().count('\n') >= min_lines):
    if proc.poll() is not None:
      pytest.fail(f'the grid exited ({proc.returncode}) before the kill')
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f'{metrics} did not reach {min_lines} epochs in time')
    time.sleep(0.01)
  proc.kill()  # No handler runs; a save may be half written.
  proc.wait(timeout=60)


def test_grid_killed_twice_resumes_to_the_same_summary(tiny_dataset,
                                                       tmp_path):
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  subprocess.run(_grid_cmd(straight, tiny_dataset), cwd=REPO, check=True,
                 capture_output=True)
  want = json.loads((straight / 'grid_summary.json').read_text())
  # Killed in the first cell, then (resumed) in the second one.
  with (tmp_path / 'grid.log').open('w') as log:
    for cell, lines in (('reg_weight=0.001', 2), ('reg_weight=0.01', 2)):
      proc = subprocess.Popen(_grid_cmd(killed, tiny_dataset), cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT)
      _kill_when(proc, killed / cell / 'metrics.jsonl', lines)
      assert not (killed / 'grid_summary.json').exists()
  done = subprocess.run(_grid_cmd(killed, tiny_dataset), cwd=REPO,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((killed / 'grid_summary.json').read_text()) == want
  for cell in ('reg_weight=0.001', 'reg_weight=0.01'):
    assert (rundirs.read_result(killed / cell) ==
            rundirs.read_result(straight / cell))

"""Hardening round 2 (issue 28): documented commands that must work, values
that must not merge runs, and command-line mistakes as one `error:` line.

Each case failed on the code before the fix (a refusal of a documented
value, a silent merge, or a traceback).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import tiny
from mentor_jax import errors
from mentor_jax import evaluate
from mentor_jax import grid as grid_lib
from mentor_jax import mesh as mesh_lib
from mentor_jax import recommend
from mentor_jax import registry
from mentor_jax import report
from mentor_jax import rundirs
from mentor_jax import stack as stack_lib
from mentor_jax import stats
from mentor_jax import sweeps
from mentor_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(tmp_path, *args, devices: int = 1, module='mentor_jax.train',
         data_root=None):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  if data_root is not None:
    env['MENTOR_DATA_ROOT'] = str(data_root)
  return subprocess.run([sys.executable, '-m', module, *map(str, args)],
                        cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=600)


def _one_error_line(done, status: int, *needles: str) -> str:
  assert done.returncode == status, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr, done.stderr[-3000:]
  lines = [l for l in done.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, done.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


# --- config.mesh_shape as the command line hands it over ---------------------


def _with_mesh_shape(value) -> ml_collections.ConfigDict:
  # A new ConfigDict: tiny's is typed (mesh_shape is a str there).
  return ml_collections.ConfigDict(dict(tiny.get_config().to_dict(),
                                        mesh_shape=value))


@pytest.mark.parametrize('value,count', [
    ('auto', None), ('2', 2), ('(2,)', 2), ('2,', 2), (' ( 3 , ) ', 3),
    (2, 2), ((2,), 2), ([1], 1)])
def test_mesh_shape_accepts_numbers_and_their_text(value, count):
  assert mesh_lib.device_count(value) == count
  train.check_config(_with_mesh_shape(value))


@pytest.mark.parametrize('value', ['all', '0', '(2,2)', '-1', 0, True, 2.0,
                                   (1, 1), (True,), 'x,'])
def test_mesh_shape_refuses_the_rest_by_name(value):
  with pytest.raises(ValueError, match='mesh_shape'):
    mesh_lib.device_count(value)
  with pytest.raises(errors.ConfigError, match=r'^config\.mesh_shape='):
    train.check_config(_with_mesh_shape(value))


def test_mesh_shape_override_and_stacks_on_two_devices(data_root, tmp_path):
  common = ('--config', 'tiny.py:lightgcn', '--config.epochs=1')
  # As README shows it: the first N devices.
  done = _cli(tmp_path, *common, '--workdir', 'one', '--config.mesh_shape=2',
              devices=2, data_root=data_root)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '2 x cpu' in done.stderr
  # A stack on a host with two devices: the first, said in a warning.
  seeds = "--config.seeds=(0,1)"
  done = _cli(tmp_path, *common, seeds, '--workdir', 'stack', devices=2,
              data_root=data_root)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'a stack of runs trains on one device for now' in done.stderr
  assert (tmp_path / 'stack' / 'runs' / '1' / 'result.json').exists()
  # More devices for a stack: refused with advice that works.
  done = _cli(tmp_path, *common, seeds, '--workdir', 'refused',
              '--config.mesh_shape=(2,)', devices=2, data_root=data_root)
  _one_error_line(done, errors.ConfigError.exit_code, 'mesh_shape=1')
  assert not (tmp_path / 'refused' / 'config.json').exists()
  done = _cli(tmp_path, *common, seeds, '--workdir', 'stack1',
              '--config.mesh_shape=1', devices=2, data_root=data_root)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'trains on one device for now' not in done.stderr


# --- repeated values would merge two runs into one ----------------------------


def test_a_repeated_grid_value_or_key_is_refused():
  config = tiny.get_config()
  with pytest.raises(errors.ConfigError, match=r"temp=0\.2 is repeated"):
    grid_lib.parse_grid(['temp=0.2,0.2'], config)
  with pytest.raises(errors.ConfigError, match='repeated'):
    grid_lib.parse_grid(['temp=0.2,0.20'], config)  # The same number.
  with pytest.raises(errors.ConfigError, match="'temp' is given twice"):
    grid_lib.parse_grid(['temp=0.2', 'temp=0.4'], config)
  config.grid = {'temp': (0.2, 0.2)}
  with pytest.raises(errors.ConfigError, match='config.grid.temp'):
    grid_lib.config_grid(config)
  # Distinct values are a grid as before.
  assert grid_lib.parse_grid(['temp=0.2,0.4'], tiny.get_config()) == {
      'temp': [0.2, 0.4]}


def test_a_grid_over_a_tuple_setting_is_refused():
  with pytest.raises(errors.ConfigError, match=r"config\.seeds is a tuple.*"
                     r"--config\.seeds="):
    grid_lib.parse_grid(['seeds=1,2'], tiny.get_config())


def test_a_repeated_sweep_value_is_refused():
  config = tiny.get_config()
  family = registry.get('mentor')
  with pytest.raises(errors.ConfigError, match='repeated'):
    sweeps.parse_sweep('temp=0.2,0.2', config, family)
  with pytest.raises(errors.ConfigError, match='repeated'):
    sweeps.parse_sweep('mask_weight_g=1e-4,0.0001', config, family)
  assert sweeps.parse_sweep('temp=0.2,0.4', config, family) == {
      'temp': [0.2, 0.4]}


def test_the_grid_cli_refuses_repeated_values_in_one_line(data_root,
                                                          tmp_path):
  done = _cli(tmp_path, '--config', 'tiny', '--workdir', 'g',
              '--grid', 'temp=0.2,0.2', module='mentor_jax.grid',
              data_root=data_root)
  _one_error_line(done, errors.ConfigError.exit_code, 'temp=0.2 is repeated')
  assert not (tmp_path / 'g').exists()


# --- command-line mistakes: one line, not absl's or ml_collections' ----------


@pytest.mark.parametrize('module', ['mentor_jax.train', 'mentor_jax.grid'])
@pytest.mark.parametrize('flag,needles', [
    ('--config.lerning_rate=1', ("no setting 'lerning_rate'",
                                 'Did you mean "learning_rate"')),
    ('--config.no.such=1', ("no setting 'no'",)),
    ('--config.epochs=abc', ('--config.epochs=abc',)),
])
def test_a_bad_config_flag_is_one_error_line(tmp_path, module, flag,
                                             needles):
  done = _cli(tmp_path, '--config', 'tiny', '--workdir', 'w', flag,
              module=module)
  _one_error_line(done, errors.ConfigError.exit_code, *needles)
  assert not (tmp_path / 'w').exists()


# --- the grid: a diverged cell, a signal ------------------------------------


def _fake_result(value: float) -> dict:
  metrics = {'recall@10': value, 'ndcg@10': value / 2, 'recall@20': value,
             'ndcg@20': value / 2}
  return {'best_epoch': 0, 'epochs_run': 1, 'valid': metrics,
          'test': metrics}


def test_a_diverged_cell_is_a_row_and_the_summary_is_written(tmp_path):
  config = tiny.get_config()
  trained = []

  def train_fn(job, workdir):
    trained.append(job.temp)
    if job.temp == 0.4:
      raise errors.TrainingDivergedError('loss part bpr became NaN')
    return _fake_result(job.temp)

  summary = grid_lib.run_grid(config, tmp_path, {'temp': [0.2, 0.4, 0.6]},
                              train_fn=train_fn)
  assert trained == [0.2, 0.4, 0.6]
  rows = {row['name']: row for row in summary['cells']}
  assert rows['temp=0.4']['diverged'] == 'loss part bpr became NaN'
  assert summary['selected_by_valid'] == 'temp=0.6'
  assert (tmp_path / 'grid_summary.json').exists()
  assert 'temp=0.4 (diverged)' in (tmp_path / 'grid_summary.md').read_text()


def test_a_stopped_cell_stops_the_grid_without_a_summary(tmp_path):
  config = tiny.get_config()
  trained = []

  def train_fn(job, workdir):
    trained.append(job.temp)
    return dict(_fake_result(job.temp), interrupted='SIGTERM')

  out = grid_lib.run_grid(config, tmp_path, {'temp': [0.2, 0.4]},
                          train_fn=train_fn)
  assert out == {'interrupted': 'SIGTERM', 'cell': 'temp=0.2'}
  assert trained == [0.2]
  assert not (tmp_path / 'grid_summary.json').exists()


def test_a_stack_row_averages_the_runs_that_did_not_diverge():
  good = dict(_fake_result(0.3), run=1, seed=1, overrides={})
  bad = {'best_epoch': -1, 'epochs_run': 1, 'valid': {}, 'test': {},
         'diverged': 'NaN', 'run': 0, 'seed': 0, 'overrides': {}}
  rows = grid_lib._rows_of_stack({'runs': [bad, good]}, {'temp': 0.2},
                                 key_order=['temp'])
  assert rows[0]['valid']['recall@10'] == pytest.approx(0.3)
  assert rows[0]['seeds'] == [0, 1]


def test_sigterm_stops_the_grid_cli_with_the_signals_status(data_root,
                                                            tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO),
             MENTOR_DATA_ROOT=str(data_root))
  proc = subprocess.Popen(
      [sys.executable, '-m', 'mentor_jax.grid', '--config', 'tiny',
       '--workdir', 'g', '--grid', 'temp=0.2,0.4', '--nostack',
       '--config.epochs=100000', '--config.stopping_step=100000'],
      cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
  try:
    for line in proc.stderr:
      if line.startswith(tuple('0123456789')) and ' epoch 0/' in line:
        proc.send_signal(signal.SIGTERM)
        break
    try:
      _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
      pytest.fail('the grid went on after SIGTERM')
    assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert 'Traceback' not in rest
  assert not (tmp_path / 'g' / 'grid_summary.json').exists()
  assert not (tmp_path / 'g' / 'temp=0.4').exists()


# --- a stack keeps what a resume can need, not every best step ---------------


def _steps(folder: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def test_each_run_of_a_stack_prunes_its_best_steps(tiny_dataset, tmp_path):
  config = tiny.get_config('lightgcn')
  config.data_npz = str(tiny_dataset)
  config.seeds = (0, 1, 2)
  config.epochs = 8
  config.learning_rate = 0.05  # Improves often: many best steps.
  train.train_and_evaluate(config, tmp_path)
  latest = _steps(tmp_path / 'checkpoints' / 'latest')
  assert len(latest) == 2
  pruned = 0
  for k in range(3):
    run = tmp_path / 'runs' / str(k)
    records = [json.loads(line) for line in
               (run / 'metrics.jsonl').read_text().splitlines()]
    improved = [r['epoch'] for r in records if r['best_epoch'] == r['epoch']]
    # The single run's rule: the best step the oldest latest step names,
    # and any newer one.
    anchor = max(e for e in improved if e <= min(latest))
    assert _steps(run / 'checkpoints' / 'best') == [
        e for e in improved if e >= anchor]
    pruned += sum(e < anchor for e in improved)
  assert pruned > 0  # Otherwise this would not test the pruning.


# --- the per-user file belongs to the best checkpoint ------------------------


def _lightgcn(tiny_dataset, **overrides):
  config = tiny.get_config('lightgcn')
  config.data_npz = str(tiny_dataset)
  config.epochs = 4
  for key, value in overrides.items():
    config[key] = value
  return config


def _read_npz(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.parametrize('seeds', [(), (0, 1)])
def test_a_resume_writes_the_per_user_file_of_the_best_epoch(
    tiny_dataset, tmp_path, seeds):
  config = _lightgcn(tiny_dataset, seeds=seeds)
  result = train.train_and_evaluate(config, tmp_path)
  runs = [tmp_path] if not seeds else [tmp_path / 'runs' / '0',
                                       tmp_path / 'runs' / '1']
  bests = ([result['best_epoch']] if not seeds
           else [r['best_epoch'] for r in result['runs']])
  written = [_read_npz(run / rundirs.PER_USER_FILE) for run in runs]
  for arrays, best in zip(written, bests):
    assert int(arrays[rundirs.PER_USER_EPOCH]) == best
  # A file of another epoch, as a kill between the best save and the next
  # latest one leaves it; and the run not finished yet.
  stale = runs[-1] / rundirs.PER_USER_FILE
  np.savez(stale, **dict(written[-1], **{
      'recall@20': written[-1]['recall@20'] + 1.0,
      rundirs.PER_USER_EPOCH: np.int64(bests[-1] + 1)}))
  (tmp_path / 'result.json').unlink()
  train.train_and_evaluate(config, tmp_path)  # Resumes: nothing to train.
  again = _read_npz(stale)
  assert again.keys() == written[-1].keys()
  for key in again:
    np.testing.assert_array_equal(again[key], written[-1][key])


def test_a_per_user_file_of_another_epoch_is_refused(tmp_path):
  users = np.arange(5, dtype=np.int64)
  np.savez(tmp_path / rundirs.PER_USER_FILE, users=users,
           **{'recall@20': np.full(5, 0.5), rundirs.PER_USER_EPOCH:
              np.int64(2)})
  (tmp_path / 'result.json').write_text(json.dumps(
      {'best_epoch': 3, 'valid': {}, 'test': {}}))
  with pytest.raises(errors.ResultFileError,
                     match=r'epoch 2, and .*result\.json names best epoch 3'):
    stats.load_per_user(tmp_path)
  (tmp_path / 'result.json').write_text(json.dumps(
      {'best_epoch': 2, 'valid': {}, 'test': {}}))
  loaded = stats.load_per_user(tmp_path)
  assert sorted(loaded) == ['recall@20', 'users']


# --- a resume that changes settings: one rule for single runs and stacks -----


@pytest.mark.parametrize('seeds', [(), (0, 1)])
def test_a_changed_setting_is_said_and_recorded_from_its_epoch(
    tiny_dataset, tmp_path, seeds, caplog):
  config = _lightgcn(tiny_dataset, seeds=seeds, epochs=2)
  train.train_and_evaluate(config, tmp_path)
  config = _lightgcn(tiny_dataset, seeds=seeds, epochs=3,
                     learning_rate=config.learning_rate / 2)
  with caplog.at_level('WARNING'):
    result = train.train_and_evaluate(config, tmp_path)
  said = [r.getMessage() for r in caplog.records
          if 'changed settings from epoch 2' in r.getMessage()]
  assert len(said) == 1 and 'learning_rate' in said[0], caplog.text
  results = [result] if not seeds else result['runs'] + [
      json.loads((tmp_path / 'runs' / str(k) / 'result.json').read_text())
      for k in range(2)]
  for r in results:
    (change,) = r['changed_settings']
    assert change['from_epoch'] == 2
    assert 'learning_rate' in change['settings']
    # Extending a run is not a change of the experiment.
    assert 'epochs' not in change['settings']


# --- report on a damaged stack ---------------------------------------------


@pytest.fixture(scope='module')
def finished_stack(tiny_dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('stack')
  config = _lightgcn(tiny_dataset, seeds=(0, 1, 2), epochs=2)
  train.train_and_evaluate(config, workdir)
  return workdir


def _copy(workdir, tmp_path):
  out = tmp_path / 'stack'
  shutil.copytree(workdir, out)
  return out


def test_report_counts_a_run_whose_files_are_gone(finished_stack, tmp_path,
                                                  capsys):
  workdir = _copy(finished_stack, tmp_path)
  for name in ('config.json', 'metrics.jsonl', 'result.json'):
    (workdir / 'runs' / '1' / name).unlink()
  (row,) = report.load_stack(workdir)
  assert row['stack']['ks'] == [0, 1, 2]
  top = json.loads((workdir / 'result.json').read_text())
  for metric, want in top['summary']['test'].items():
    assert row['stack']['summary']['test'][metric]['mean'] == pytest.approx(
        want['mean'])
  assert f'{workdir / "runs" / "1"} has no config.json' in capsys.readouterr(
      ).out


def test_report_leaves_out_a_run_that_diverged_at_epoch_0(finished_stack,
                                                          tmp_path, capsys):
  workdir = _copy(finished_stack, tmp_path)
  diverged = {'best_epoch': -1, 'valid': {}, 'test': {}, 'epochs_run': 1,
              'diverged': 'epoch 0, step 1: loss part bpr became NaN'}
  top = json.loads((workdir / 'result.json').read_text())
  top['runs'][0].update(diverged)
  (workdir / 'result.json').write_text(json.dumps(top))
  (workdir / 'runs' / '0' / 'result.json').write_text(json.dumps(diverged))
  (row,) = report.load_stack(workdir)
  kept = top['runs'][1:]
  for metric in top['summary']['test']:
    assert row['stack']['summary']['test'][metric]['mean'] == pytest.approx(
        np.mean([r['test'][metric] for r in kept]))
  assert 'run 0 of' in capsys.readouterr().out
  assert report.main([str(workdir), '--no-png']) == 0


@pytest.mark.parametrize('damage', ['config_not_json', 'config_partial',
                                    'result_partial', 'metrics_no_valid'])
def test_report_on_damaged_files_is_one_line(finished_stack, tmp_path,
                                             capsys, damage):
  workdir = _copy(finished_stack, tmp_path)
  run = workdir / 'runs' / '2'
  if damage == 'config_not_json':
    (run / 'config.json').write_text('{"model": "lightgcn", ')
  elif damage == 'config_partial':
    (run / 'config.json').write_text('{"model": "lightgcn"}')
  elif damage == 'result_partial':
    (run / 'result.json').write_text('{"best_epoch": 1}')
  else:  # A record without metrics is not an epoch: skipped, no error.
    (run / 'result.json').unlink()
    (workdir / 'result.json').unlink()
    with open(run / 'metrics.jsonl', 'a') as f:
      f.write(json.dumps({'epoch': 2, 'loss': {}}) + '\n')
  status = report.main([str(workdir), '--no-png'])
  err = capsys.readouterr().err
  if damage == 'metrics_no_valid':
    assert status == 0, err
    return
  assert status == errors.ResultFileError.exit_code
  assert 'Traceback' not in err
  (line,) = [l for l in err.splitlines() if l.startswith('error:')]
  assert str(run) in line


# --- recommend: user ids --------------------------------------------------


def test_user_ids_out_of_any_range_are_one_message(tmp_path):
  with pytest.raises(ValueError, match=r'unknown user ids .*0\.\.59'):
    recommend.parse_users('0,' + '9' * 40, 60)
  with pytest.raises(ValueError, match='must be integers'):
    recommend.parse_users('0,\u00b2', 60)  # A superscript two.
  np.testing.assert_array_equal(recommend.parse_users('3\n5', 60), [3, 5])
  latin1 = tmp_path / 'ids.txt'
  latin1.write_bytes('0\n5\nJos\xe9\n'.encode('latin-1'))
  with pytest.raises(ValueError, match='not UTF-8 text'):
    recommend.read_users_file(str(latin1))
  with pytest.raises(ValueError, match='cannot be read'):
    recommend.read_users_file(str(tmp_path))  # A folder.


def test_recommend_cli_refuses_a_non_utf8_users_file(finished_stack,
                                                     tmp_path):
  ids = tmp_path / 'ids.txt'
  ids.write_bytes(b'0\n\xff\xfe5\n')
  done = _cli(tmp_path, '--workdir', finished_stack, '--run', '1',
              '--users-file', ids, module='mentor_jax.recommend')
  assert done.returncode == 2, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr
  assert 'not UTF-8 text' in done.stderr.splitlines()[-1]


# --- evaluate and report on damaged files -----------------------------------


@pytest.mark.parametrize('damage', ['meta', 'arrays'])
def test_evaluate_on_a_damaged_best_checkpoint_is_one_line(
    finished_stack, tmp_path, capsys, damage):
  workdir = _copy(finished_stack, tmp_path)
  best = workdir / 'runs' / '1' / 'checkpoints' / 'best'
  (step,) = [p for p in best.iterdir() if p.name.isdigit()][-1:]
  if damage == 'meta':
    for f in (step / 'meta').rglob('*'):
      if f.is_file():
        f.write_text('{"broken": ')
  else:
    for f in (step / 'params').rglob('*'):
      if f.is_file() and f.stat().st_size > 100:
        f.write_bytes(f.read_bytes()[:50])
  status = evaluate.main(['--workdir', str(workdir), '--run', '1'])
  err = capsys.readouterr().err
  assert status == errors.CheckpointError.exit_code, err[-3000:]
  assert 'Traceback' not in err
  (line,) = [l for l in err.splitlines() if l.startswith('error:')]
  assert str(step) in line and 'cannot be read back' in line


@pytest.mark.parametrize('size', [0, 60])
def test_a_truncated_per_user_file_is_one_message(finished_stack, tmp_path,
                                                  size):
  workdir = _copy(finished_stack, tmp_path)
  path = workdir / 'runs' / '0' / rundirs.PER_USER_FILE
  path.write_bytes(path.read_bytes()[:size])
  with pytest.raises(errors.ResultFileError, match='not a readable .npz'):
    stats.load_per_user(workdir)

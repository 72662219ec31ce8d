"""Checkpoints: round trip, exact resume, kill and resume, evaluate, recommend.

One tiny training run of N epochs (module fixture) is the reference every
other run must reproduce exactly. The subprocess tests share the session's
persistent compilation cache (conftest), so only the first one compiles the
epoch.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from mentor_jax import checkpointing
from mentor_jax import data as data_lib
from mentor_jax import evaluate
from mentor_jax import ranking
from mentor_jax import recommend
from mentor_jax import registry
from mentor_jax import train
from mentor_jax import epoch as epoch_lib
from mentor_jax import rundirs

REPO = pathlib.Path(__file__).resolve().parents[1]
N_EPOCHS = 30  # Long enough (a few seconds) to signal a run mid-way.


def make_config(npz, **overrides):
  config = tiny.get_config()
  config.data_npz = str(npz)
  config.epochs = N_EPOCHS
  for k, v in overrides.items():
    config[k] = v
  return config


def epochs_logged(workdir):
  return [r['epoch'] for r in rundirs.read_metrics(workdir)]


def latest_params(workdir):
  ckpt = checkpointing.Checkpointer(pathlib.Path(workdir) / 'checkpoints')
  step = ckpt.latest.latest_step()
  out = ckpt.latest.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore()))
  ckpt.close()
  return step, out['params']


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def straight(tiny_dataset, tmp_path_factory):
  """(workdir, result) of an uninterrupted N-epoch run."""
  workdir = tmp_path_factory.mktemp('straight')
  result = train.train_and_evaluate(make_config(tiny_dataset), workdir)
  return workdir, result


def test_save_restore_round_trip(tiny_dataset, tmp_path):
  config = make_config(tiny_dataset)
  dataset = data_lib.load_dataset(tiny_dataset)
  family = registry.get(config.model)
  hp = family.make_hparams(config, max_row_len=1)
  _, _, state = epoch_lib.init_state(family.create_model(config, dataset),
                                     family, hp, 3)
  # A non-trivial optimizer state: one Adam update on random gradients.
  grads = jax.tree.map(lambda p: jax.random.normal(
      jax.random.PRNGKey(1), p.shape), state.params)
  _, opt_state = family.make_optimizer(hp).update(
      grads, state.opt_state, state.params)
  sig = checkpointing.signature(config.model, dataset, state.params)
  ckpt = checkpointing.Checkpointer(tmp_path)
  meta = {'format': checkpointing.FORMAT_VERSION, 'signature': sig,
          'key': checkpointing.key_to_json(state.key)}
  ckpt.save_latest(7, state.params, opt_state, meta)
  ckpt.close()

  ckpt = checkpointing.Checkpointer(tmp_path)
  params, opt, meta = ckpt.restore_latest(state.params, opt_state, sig)
  ckpt.close()
  assert jax.tree.structure(params) == jax.tree.structure(state.params)
  assert jax.tree.structure(opt) == jax.tree.structure(opt_state)
  assert_trees_equal(params, state.params)
  assert_trees_equal(opt, opt_state)
  key = checkpointing.key_from_json(meta['key'], state.key)
  np.testing.assert_array_equal(key, state.key)


def test_resume_equals_uninterrupted(tiny_dataset, tmp_path, straight):
  ref_dir, ref = straight
  # Stop after 3 epochs with a checkpoint every 2, then lose the last one,
  # as if killed before it was written: the resume replays epoch 2.
  config = make_config(tiny_dataset, epochs=3, checkpoint_every_epochs=2)
  train.train_and_evaluate(config, tmp_path)
  assert (tmp_path / 'checkpoints/latest/2').is_dir()
  shutil.rmtree(tmp_path / 'checkpoints/latest/2')
  config = make_config(tiny_dataset, checkpoint_every_epochs=2)
  result = train.train_and_evaluate(config, tmp_path)

  assert result == ref
  assert epochs_logged(tmp_path) == list(range(result['epochs_run']))
  step, params = latest_params(tmp_path)
  ref_step, ref_params = latest_params(ref_dir)
  assert step == ref_step == result['epochs_run'] - 1
  assert_trees_equal(params, ref_params)
  # Rerunning a finished run trains nothing and reports the same result.
  assert train.train_and_evaluate(config, tmp_path) == ref


def test_other_model_or_dataset_is_a_clear_error(tiny_dataset, tmp_path,
                                                straight):
  ref_dir, _ = straight
  shutil.copytree(ref_dir / 'checkpoints', tmp_path / 'checkpoints')
  # No perturbed encoders: a different parameter tree.
  config = make_config(tiny_dataset, mask_weight_g=0.0)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r'different model or dataset(.|\n)*param '
                           r'encoders/t_n1'):
    train.train_and_evaluate(config, tmp_path)
  saved = {'model': 'mentor', 'n_users': 60, 'n_items': 40, 'params': {}}
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='n_items: checkpoint 40, now 50'):
    checkpointing.check_signature(saved, dict(saved, n_items=50), 'x')


def test_evaluate_reproduces_logged_best_epoch(straight, tmp_path, capsys):
  workdir, ref = straight
  log = rundirs.read_metrics(workdir)
  logged = log[ref['best_epoch']]
  out = tmp_path / 'eval.json'
  assert evaluate.main(['--workdir', str(workdir), '--json-out',
                        str(out)]) == 0
  result = json.loads(out.read_text())
  assert result['epoch'] == ref['best_epoch']
  assert result['embeddings'] == 'saved'
  assert result['valid'] == logged['valid'] == ref['valid']
  assert result['test'] == logged['test'] == ref['test']
  assert 'recall@50' in capsys.readouterr().out


def test_evaluate_recomputes_from_params(tiny_dataset, tmp_path):
  config = make_config(tiny_dataset, epochs=2, eval_embeddings='recompute')
  ref = train.train_and_evaluate(config, tmp_path)
  restored = evaluate.load(tmp_path, with_scores=False)
  result = evaluate.evaluate(restored)
  assert result['embeddings'] == 'recompute'
  assert result['valid'] == ref['valid'] and result['test'] == ref['test']


def test_recommend_excludes_training_items(straight, tmp_path):
  workdir, _ = straight
  restored = evaluate.load(workdir)
  (user_emb, item_emb), _ = evaluate.embeddings(restored)
  n_users = restored.dataset.n_users
  users = np.arange(n_users, dtype=np.int32)
  indptr, train_items = restored.dataset.split('train')
  k = 10
  items, scores = ranking.top_k_items(user_emb, item_emb, users, indptr,
                                      train_items, k=k, chunk_size=16)
  assert items.shape == (n_users, k)
  for u in users:
    seen = set(train_items[indptr[u]:indptr[u + 1]].tolist())
    row = items[u][items[u] >= 0]
    assert len(set(row.tolist())) == len(row)
    assert not seen & set(row.tolist())
    assert len(row) == min(k, restored.dataset.n_items - len(seen))
  assert np.all(np.diff(scores, axis=1) <= 0)
  # The same ranking as a dense numpy reference for one user.
  s = np.asarray(user_emb)[5] @ np.asarray(item_emb).T
  s[train_items[indptr[5]:indptr[6]]] = -np.inf
  np.testing.assert_array_equal(items[5], np.argsort(-s, kind='stable')[:k])

  out = tmp_path / 'recs.tsv'
  assert recommend.main(['--workdir', str(workdir), '--users', '0,5,7',
                         '--k', '3', '--out', str(out)]) == 0
  lines = out.read_text().splitlines()
  assert lines[0] == 'user\trank\titem\tscore' and len(lines) == 1 + 9
  assert [int(x.split('\t')[2]) for x in lines[4:7]] == items[5, :3].tolist()
  with pytest.raises(ValueError, match=r'unknown user ids.*\[60\]'):
    recommend.parse_users('0,60', n_users)
  with pytest.raises(ValueError, match='integers'):
    recommend.parse_users('0,x', n_users)


def _train_cmd(workdir, npz):
  return [sys.executable, '-m', 'mentor_jax.train', '--config',
          'configs/tiny.py', f'--workdir={workdir}',
          f'--config.epochs={N_EPOCHS}', f'--config.data_npz={npz}']


@pytest.fixture(scope='module')
def subprocess_env():
  # The session's compilation cache (conftest) is in the environment.
  return dict(os.environ)


def _start_and_wait(workdir, npz, env, log, min_epochs=2, timeout=300):
  # The log goes to a file: an unread pipe would fill up and block the child.
  proc = subprocess.Popen(_train_cmd(workdir, npz), cwd=REPO, env=env,
                          stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + timeout
  while len(epochs_logged(workdir)) < min_epochs:
    if proc.poll() is not None:
      pytest.fail(f'training exited early ({proc.returncode})')
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f'training did not reach {min_epochs} epochs in time')
    time.sleep(0.01)
  return proc


def test_sigterm_then_resume(tiny_dataset, tmp_path, straight,
                             subprocess_env):
  _, ref = straight
  log_path = tmp_path.parent / f'{tmp_path.name}.log'
  with log_path.open('w') as log:
    proc = _start_and_wait(tmp_path, tiny_dataset, subprocess_env, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  text = log_path.read_text()
  assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
  assert 'Run the same command again to resume' in text
  done = epochs_logged(tmp_path)
  assert done == list(range(len(done))) and len(done) < N_EPOCHS
  ckpt = checkpointing.Checkpointer(tmp_path / 'checkpoints')
  assert ckpt.latest.latest_step() == done[-1]  # Saved on the way out.
  ckpt.close()
  assert not (tmp_path / 'result.json').exists()

  subprocess.run(_train_cmd(tmp_path, tiny_dataset), cwd=REPO,
                 env=subprocess_env, check=True, capture_output=True)
  result = json.loads((tmp_path / 'result.json').read_text())
  assert result == ref
  assert epochs_logged(tmp_path) == list(range(ref['epochs_run']))


def test_sigkill_leaves_a_restorable_checkpoint(tiny_dataset, tmp_path,
                                                straight, subprocess_env):
  _, ref = straight
  with (tmp_path.parent / f'{tmp_path.name}.log').open('w') as log:
    proc = _start_and_wait(tmp_path, tiny_dataset, subprocess_env, log,
                           min_epochs=3)
    # Saves are asynchronous: under load the logged epochs can run ahead of
    # the finalized checkpoints. Wait for a finalized one past epoch 0 (Orbax
    # renames a step's tmp directory to the bare step number when done).
    latest = tmp_path / 'checkpoints' / checkpointing.LATEST
    deadline = time.monotonic() + 180
    while not any(p.name.isdigit() and int(p.name) >= 1
                  for p in latest.glob('*')):
      if time.monotonic() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail('no finalized checkpoint past epoch 0 in time')
      time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, a save may be half written.
    proc.wait(timeout=60)
  ckpt = checkpointing.Checkpointer(tmp_path / 'checkpoints',
                                    read_only=True)
  step = ckpt.latest.latest_step()
  assert step is not None and step >= 1
  assert checkpointing.read_meta(ckpt.latest, step)['epoch'] == step
  ckpt.close()
  result = train.train_and_evaluate(make_config(tiny_dataset), tmp_path)
  assert result == ref
  assert epochs_logged(tmp_path) == list(range(ref['epochs_run']))
  assert not list((tmp_path / 'checkpoints').glob('*/*orbax-checkpoint-tmp*'))


def _old_run_config(model, npz, **overrides):
  # The settings the fixture's runs were trained with (before issue 23, by
  # the trainer of commit ab31d44): configs/baseline.py:<model>,tiktok on
  # the tiny .npz.
  from configs import baseline  # pylint: disable=g-import-not-at-top
  config = baseline.get_config(f'{model},tiktok')
  config.data_npz = str(npz)
  config.data_source = ''
  config.train_batch_size = 64
  config.embedding_size = 8
  config.epochs = 3
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize('name, model, overrides', [
    ('single', 'lightgcn', {}),
    ('stack', 'mfbpr', {'seeds': (0, 1)}),
])
def test_checkpoints_written_before_the_trainer_change_resume_exactly(
    tiny_dataset, tmp_path, name, model, overrides):
  # tests/data/checkpoints_before_issue23.tar.gz: a single run and a stack
  # stopped after epoch 0 of 3 by the old trainer, and the records of the
  # same runs trained straight to 3 epochs by it. Resumed now, they must
  # end exactly as the old trainer ended them.
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(REPO / 'tests' / 'data' /
                    'checkpoints_before_issue23.tar.gz') as archive:
    archive.extractall(tmp_path, filter='data')
  workdir = tmp_path / name
  result = train.train_and_evaluate(
      _old_run_config(model, tiny_dataset, **overrides), workdir)
  straight = tmp_path / f'{name}_straight'
  runs = ['.'] if name == 'single' else ['runs/0', 'runs/1']
  strip = lambda log: [{k: v for k, v in r.items() if 'time' not in k}
                       for r in log]
  for run in runs:
    got = strip(rundirs.read_metrics(workdir / run))
    want = strip(rundirs.read_metrics(straight / run))
    assert [r['epoch'] for r in want] == [0, 1, 2]
    assert _fields_of(got, want) == want, run
  old = json.loads((straight / 'result.json').read_text())
  # result.json records the data's digest since (the old one did not).
  assert result.pop('data_sha256') == data_lib.load_dataset(
      tiny_dataset).digest
  assert _fields_of(json.loads(json.dumps(result)), old) == old


def _fields_of(new, old):
  """`new` cut to the fields `old` has: metrics added since (MAP, Hit, MRR)
  are new keys beside the old ones, which must be unchanged."""
  if isinstance(new, dict) and isinstance(old, dict):
    return {k: _fields_of(new[k], old[k]) if k in new else None for k in old}
  if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
    return [_fields_of(n, o) for n, o in zip(new, old)]
  return new


def test_a_changed_optimizer_is_refused_not_set_aside(tiny_dataset, tmp_path):
  # Switching a learning-rate schedule on changes the optimizer state's
  # structure: the checkpoint no longer fits, which is the user's setting,
  # not a damaged file (that would be moved aside and training restarted).
  config = tiny.get_config('lightgcn')
  config.data_npz = str(tiny_dataset)
  config.epochs = 1
  train.train_and_evaluate(config, tmp_path)
  config.epochs = 2
  config.learning_rate_scheduler = (0.5, 1)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='the optimizer state: .*learning_rate_scheduler'):
    train.train_and_evaluate(config, tmp_path)
  assert not list((tmp_path / 'checkpoints' / 'latest').glob('*.damaged'))

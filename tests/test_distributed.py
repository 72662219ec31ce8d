"""Scale-out (distributed.py, mesh.py, ops/infonce.py): devices, hosts, batch-scoped InfoNCE.

Multi-device runs need XLA_FLAGS=--xla_force_host_platform_device_count=N
before jax is imported, so they run in subprocesses of
tests/distributed_worker.py (started together, to overlap their compiles);
this process keeps its single CPU device.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from mentor_jax import distributed
from mentor_jax import errors
from mentor_jax import mesh as mesh_lib
from mentor_jax.ops import infonce
from mentor_jax import train
from mentor_jax import rundirs

WORKER = pathlib.Path(__file__).with_name('distributed_worker.py')
REPO = WORKER.parents[1]
TIMEOUT_S = 900  # Generous: the worker compiles a full epoch.


def _spawn(*args: object) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)
  return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    out, _ = p.communicate(timeout=TIMEOUT_S)
    assert p.returncode == 0, out[-4000:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def worker_runs(tiny_dataset, tmp_path_factory):
  """All subprocess runs, started at once: {name: output path}."""
  out = tmp_path_factory.mktemp('dist')
  runs, procs = {}, []
  for variant in ('default', 'light', 'freedom'):
    for n_dev in (1, 4):
      path = out / f'step_{variant}_{n_dev}.npz'
      procs.append(_spawn('step', n_dev, variant, tiny_dataset, path))
      runs[f'step_{variant}_{n_dev}'] = path
  port = _free_port()
  runs['multihost'] = out / 'multihost'
  procs += [_spawn('train', 2, pid, port, tiny_dataset, runs['multihost'])
            for pid in (0, 1)]
  _wait(procs)
  return runs


@pytest.mark.parametrize('variant', ['default', 'light', 'freedom'])
def test_step_on_4_devices_matches_1_device(worker_runs, variant):
  one = np.load(worker_runs[f'step_{variant}_1'])
  four = np.load(worker_runs[f'step_{variant}_4'])
  assert sorted(one.files) == sorted(four.files)
  assert any(k.startswith('loss_nce_g') for k in one.files) == (
      variant == 'default')
  for name in one.files:
    # Gradients: atol relative to the leaf's scale (psum reorders sums).
    scale = float(np.abs(one[name]).max()) or 1.0
    np.testing.assert_allclose(four[name], one[name], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize('variant', ['default', 'light', 'freedom'])
def test_sharded_evaluation_is_exact(worker_runs, variant):
  result = json.loads(pathlib.Path(
      str(worker_runs[f'step_{variant}_4']) + '.json').read_text())
  assert result['sharded'] == result['single']


@pytest.mark.parametrize('variant, tables', [
    ('default', []),  # shard_tables off: everything replicated.
    ('light', ['id_feat', 'preference', 'weight_u']),
    ('freedom', ['feat_t', 'feat_v', 'item_emb', 'user_emb'])])
def test_shard_tables_splits_the_family_tables(worker_runs, variant, tables):
  # Each family names its user/item tables (`ModelFamily.table_params`);
  # with shard_tables those, and nothing else, are split by rows.
  split = json.loads(pathlib.Path(
      str(worker_runs[f'step_{variant}_4']) + '.json').read_text())['split']
  found = sorted({name for path in split for name in tables
                  if name in path})
  assert found == tables, split
  assert all(any(name in path for name in tables) for path in split), split


def test_shard_tables_is_refused_for_a_model_without_tables(tiny_dataset):
  import distributed_worker  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=protected-access
  config = distributed_worker._tiny_config(str(tiny_dataset), 'mmgcn')
  config.shard_tables = True
  with pytest.raises(errors.ConfigError, match="model 'mmgcn' has no"):
    train.check_config(config)


def test_two_processes_match_one(worker_runs, tiny_dataset, tmp_path):
  import distributed_worker  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=protected-access
  config = distributed_worker._tiny_config(str(tiny_dataset), 'default')
  config.epochs = 2
  train.train_and_evaluate(config, tmp_path)
  single = rundirs.read_metrics(tmp_path)
  multi = rundirs.read_metrics(worker_runs['multihost'])
  assert len(single) == len(multi) == 2
  for s, m in zip(single, multi):
    for k, v in s['loss'].items():
      np.testing.assert_allclose(m['loss'][k], v, rtol=1e-4, err_msg=k)
    for split in ('valid', 'test'):
      for k, v in s[split].items():
        np.testing.assert_allclose(m[split][k], v, atol=1e-6, err_msg=k)


def test_first_occurrence():
  ids = jnp.array([3, 1, 3, 2, 1, 7, 3])
  mask = jnp.array([1, 1, 1, 1, 1, 0, 1])
  got = infonce.first_occurrence(ids, mask)
  np.testing.assert_array_equal(got, [1, 1, 0, 1, 0, 0, 0])


def test_batch_scope_equals_all_rows_when_batch_has_every_row():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  n, d = 23, 16
  a = jax.random.normal(keys[0], (n, d))
  b = jax.random.normal(keys[1], (n, d))
  # Every row, shuffled, plus duplicates and two padded rows.
  ids = jnp.concatenate([jax.random.permutation(keys[2], n),
                         jnp.array([4, 4, 0, 9, 11])])
  mask = jnp.ones(ids.shape).at[-2:].set(0.0)
  f_all = lambda a, b: infonce.info_nce_loss(a, b, 0.2, scope='all')
  f_batch = lambda a, b: infonce.info_nce_loss(a, b, 0.2, scope='batch',
                                              ids=ids, mask=mask)
  v_all, g_all = jax.value_and_grad(f_all, (0, 1))(a, b)
  v_batch, g_batch = jax.value_and_grad(f_batch, (0, 1))(a, b)
  np.testing.assert_allclose(v_batch, v_all, rtol=1e-6)
  for x, y in zip(g_batch, g_all):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(v_all, infonce.info_nce(a, b, 0.2), rtol=1e-6)


def test_batch_scope_is_the_subset_loss():
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  a = jax.random.normal(keys[0], (30, 8))
  b = jax.random.normal(keys[1], (30, 8))
  ids = jnp.array([5, 2, 5, 17, 2, 29])
  want = infonce.info_nce(a[jnp.array([5, 2, 17, 29])],
                         b[jnp.array([5, 2, 17, 29])], 0.2)
  got = infonce.info_nce_batch(a, b, 0.2, ids, jnp.ones(6))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_mesh_and_runner_on_one_device():
  mesh = mesh_lib.make_mesh('auto')
  assert mesh.axis_names == ('data',)
  runner = distributed.Runner(mesh)
  assert runner.active == (len(jax.devices()) > 1)
  with pytest.raises(ValueError, match='mesh_shape'):
    mesh_lib.make_mesh((1, 1))
  assert tiny.get_config().infonce_scope == 'all'

"""MF-BPR, LightGCN and FREEDOM against numpy, and short real-data runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest

from configs import baseline
from mentor_jax import data as data_lib
from mentor_jax import report
from mentor_jax import train
from mentor_jax.models import freedom
from mentor_jax.models import lightgcn
from mentor_jax.models import mfbpr
from mentor_jax import rundirs

_config = conftest.baseline_config


_built = conftest.build_baseline  # (dataset, config, family, hp, model, data)


def _dense_norm_adj(dataset: data_lib.Dataset) -> np.ndarray:
  """MMRec's get_norm_adj_mat, densely, from the raw training rows."""
  u, i = dataset.arrays['train_user'], dataset.arrays['train_item']
  n_users, n = dataset.n_users, dataset.n_users + dataset.n_items
  a = np.zeros((n, n))
  a[u, n_users + i] = 1.0
  a[n_users + i, u] = 1.0
  d = (a.sum(1) + 1e-7) ** -0.5
  return d[:, None] * a * d[None, :]


def _one_batch(dataset, batch_size=32, seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, batch_size, replace=False)
  users = dataset.arrays['train_user'][rows]
  mask = np.ones(batch_size, np.float32)
  mask[-3:] = 0.0  # Padding rows must not count.
  return data_lib.Batches(
      jnp.asarray(users), jnp.asarray(dataset.arrays['train_item'][rows]),
      jnp.asarray(rng.integers(0, dataset.n_items, batch_size)),
      jnp.asarray(mask))


def _mmrec_loss_numpy(u, p, n, mask):
  """(BPRLoss, EmbLoss) of MMRec on the real rows, in float64."""
  keep = mask > 0
  u, p, n = u[keep], p[keep], n[keep]
  diff = (u * p).sum(1) - (u * n).sum(1)
  bpr = -np.log(1e-10 + 1.0 / (1.0 + np.exp(-diff))).mean()
  reg = sum(np.linalg.norm(x) for x in (u, p, n)) / len(u)
  return bpr, reg


@pytest.mark.parametrize('n_layers', [1, 3])
def test_lightgcn_propagation_matches_dense_numpy(tiny_dataset, n_layers):
  dataset, _, family, hp, model, data = _built('lightgcn', tiny_dataset,
                                                n_layers=n_layers)
  users, items = family.score(model, data, hp)

  adj = _dense_norm_adj(dataset)
  x = np.concatenate([np.asarray(model.user_emb[...]),
                      np.asarray(model.item_emb[...])]).astype(np.float64)
  layers = [x]
  for _ in range(n_layers):
    layers.append(adj @ layers[-1])
  want = np.mean(layers, axis=0)
  got = np.concatenate([users, items])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  # Loss: BPRLoss on propagated rows + EmbLoss on the ego rows.
  batch = _one_batch(dataset)
  total, _ = lightgcn.loss(model, data, batch, jax.random.PRNGKey(0), hp)
  b = jax.tree.map(np.asarray, batch)
  n_users = dataset.n_users
  u_ego, i_ego = x[:n_users], x[n_users:]
  bpr, _ = _mmrec_loss_numpy(want[:n_users][b.users],
                             want[n_users:][b.pos_items],
                             want[n_users:][b.neg_items], b.mask)
  _, reg = _mmrec_loss_numpy(u_ego[b.users], i_ego[b.pos_items],
                             i_ego[b.neg_items], b.mask)
  np.testing.assert_allclose(float(total), bpr + hp.reg_weight * reg,
                             rtol=1e-5)


def test_mfbpr_scores_are_dot_products_of_its_tables(tiny_dataset):
  dataset, config, family, hp, model, data = _built('mfbpr', tiny_dataset,
                                                     reg_weight=0.1)
  users, items = family.score(model, data, hp)
  np.testing.assert_array_equal(users, model.user_emb[...])
  np.testing.assert_array_equal(items, model.item_emb[...])
  # xavier-normal: std sqrt(2 / (fan_in + fan_out)).
  std = np.sqrt(2.0 / (dataset.n_users + config.embedding_size))
  assert 0.8 * std < np.std(users) < 1.2 * std

  batch = _one_batch(dataset)
  total, (parts, _) = mfbpr.loss(model, data, batch, None, hp)
  b = jax.tree.map(np.asarray, batch)
  u, i = np.asarray(users, np.float64), np.asarray(items, np.float64)
  bpr, reg = _mmrec_loss_numpy(u[b.users], i[b.pos_items], i[b.neg_items],
                                b.mask)
  np.testing.assert_allclose(float(total), bpr + hp.reg_weight * reg,
                             rtol=1e-5)
  assert set(parts) == {'bpr', 'reg'}


@pytest.mark.parametrize('dropout', [0.8, 0.3])
def test_freedom_pruning_keeps_fraction_and_renormalizes(tiny_dataset,
                                                         dropout):
  dataset = data_lib.load_dataset(tiny_dataset)
  freedom.check_adj_layout(dataset)
  data = data_lib.to_device(dataset, 10)
  n_users, n_items = dataset.n_users, dataset.n_items
  pruned = jax.jit(freedom.prune_adj, static_argnums=(1, 3))(
      data.adj, n_users, jax.random.PRNGKey(3), dropout)

  n_edges = dataset.n_train
  values = np.asarray(pruned.values)
  assert values.shape == np.asarray(data.adj.values).shape
  assert (values[:n_edges] > 0).sum() == int(n_edges * (1 - dropout))
  assert (values > 0).sum() == 2 * int(n_edges * (1 - dropout))

  rows, cols = np.asarray(pruned.rows), np.asarray(pruned.indices)
  dense = np.zeros((n_users + n_items,) * 2)
  np.add.at(dense, (rows, cols), values)
  np.testing.assert_allclose(dense, dense.T, atol=1e-7)  # Both halves agree.
  # Re-normalized with the kept degrees, as MMRec's _normalize_adj_m.
  kept = (dense[:n_users, n_users:] > 0).astype(np.float64)
  du, di = kept.sum(1) + 1e-7, kept.sum(0) + 1e-7
  want = kept / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
  np.testing.assert_allclose(dense[:n_users, n_users:], want, rtol=1e-5,
                             atol=1e-7)


def test_freedom_pruning_prefers_low_degree_edges(tiny_dataset):
  """Edges are kept with probability increasing in 1/sqrt(d_u d_i)."""
  dataset = data_lib.load_dataset(tiny_dataset)
  data = data_lib.to_device(dataset, 10)
  n = dataset.n_train
  keys = jax.random.split(jax.random.PRNGKey(0), 100)
  prune = jax.vmap(lambda k: freedom.prune_adj(
      data.adj, dataset.n_users, k, 0.8).values[:n] > 0)
  freq = np.asarray(prune(keys)).mean(0)
  weights = np.asarray(data.adj.values[:n])
  assert np.corrcoef(weights, freq)[0, 1] > 0.5


def test_freedom_scores_use_the_full_graph(tiny_dataset):
  dataset, _, family, hp, model, data = _built('freedom', tiny_dataset,
                                                knn_k=3)
  users, items = family.score(model, data, hp)
  x = np.concatenate([np.asarray(model.user_emb[...]),
                      np.asarray(model.item_emb[...])]).astype(np.float64)
  adj = _dense_norm_adj(dataset)
  want = (x + adj @ x + adj @ adj @ x) / 3
  item_x = x[dataset.n_users:]
  knn_v = dataset.arrays['knn_v'][:, :3]
  knn_t = dataset.arrays['knn_t'][:, :3]
  h = 0.1 * item_x[knn_v].mean(1) + 0.9 * item_x[knn_t].mean(1)
  np.testing.assert_allclose(users, want[:dataset.n_users], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(items, want[dataset.n_users:] + h, rtol=1e-5,
                             atol=1e-6)


@pytest.fixture(scope='module')
def tiktok_small(shared_data, tmp_path_factory):
  """The first 600 users of the real TikTok data, prepared as .npz."""
  return conftest.prepare_tiktok_slice(
      shared_data, tmp_path_factory.mktemp('tiktok_small'), 600)


@pytest.mark.parametrize('model', ['mfbpr', 'lightgcn', 'freedom'])
def test_baseline_trains_on_real_tiktok(tiktok_small, tmp_path, model):
  config = _config(model, tiktok_small)
  config.train_batch_size = 512
  config.epochs = 4
  config.eval_batch_size = 512
  if model == 'mfbpr':
    config.learning_rate = 1e-2  # Tiny-init MF moves slowly at 1e-3.
  result = train.train_and_evaluate(config, tmp_path)
  log = rundirs.read_metrics(tmp_path)
  assert len(log) == result['epochs_run'] == 4
  bpr = [r['loss']['bpr'] for r in log]
  assert bpr[-1] < 0.95 * bpr[0], bpr
  assert all(np.isfinite(sum(r['loss'].values())) for r in log)
  assert result['valid']['recall@20'] > 0


def test_report_rows_and_paper_numbers(tmp_path):
  metrics = {m: 0.01 * (j + 1) for j, m in enumerate(report.METRICS)}
  for name, done in (('lgn', True), ('mf', False)):
    run = tmp_path / name
    run.mkdir()
    config = baseline.get_config(
        ('lightgcn' if done else 'mfbpr') + ',baby_graph')
    (run / 'config.json').write_text(config.to_json_best_effort())
    log = [{'epoch': e, 'train_time_s': 1.0, 'valid': metrics,
            'test': metrics} for e in range(3)]
    (run / 'metrics.jsonl').write_text(
        '\n'.join(json.dumps(r) for r in log) + '\n')
    if done:
      (run / 'result.json').write_text(json.dumps(
          {'best_epoch': 0, 'valid': metrics, 'test': metrics,
           'epochs_run': 3}))
  out = tmp_path / 'RESULTS.md'
  assert report.main([str(tmp_path / 'lgn'), str(tmp_path / 'mf'),
                      '--out', str(out)]) == 0
  rows = [l for l in out.read_text().splitlines()
          if l.startswith('| LightGCN') or l.startswith('| MF-BPR')]
  assert len(rows) == 2
  assert '0.0754' in rows[0] and 'early (patience 20)' in rows[0]
  assert '0.0575' in rows[1] and 'interrupted' in rows[1]

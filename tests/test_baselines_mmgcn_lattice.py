"""MMGCN and LATTICE against dense references, and short training runs.

The references build every graph as a dense matrix (numpy in float64 for
the values; the same code in jax.numpy for the gradients), so they share
nothing with the blockwise / sparse code under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest
from mentor_jax import data as data_lib
from mentor_jax import train
from mentor_jax.models import lattice
from mentor_jax.models import mmgcn
from mentor_jax.ops import graph
from mentor_jax.ops import sparse
from mentor_jax import epoch as epoch_lib
from mentor_jax import rundirs

KERNEL = epoch_lib.resolve_kernel('auto')


_config = conftest.baseline_config


def _built(name: str, npz, **overrides):
  """(dataset, hp, model, data) of model `name` on `npz`."""
  b = conftest.build_baseline(name, npz, **overrides)
  return b.dataset, b.hp, b.model, b.data


def _one_batch(dataset, batch_size=32, seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, batch_size, replace=False)
  mask = np.ones(batch_size, np.float32)
  mask[-3:] = 0.0  # Padding rows must not count.
  return data_lib.Batches(
      jnp.asarray(dataset.arrays['train_user'][rows]),
      jnp.asarray(dataset.arrays['train_item'][rows]),
      jnp.asarray(rng.integers(0, dataset.n_items, batch_size)),
      jnp.asarray(mask))


def _interactions(dataset) -> np.ndarray:
  """Dense U x I counts of the training rows."""
  r = np.zeros((dataset.n_users, dataset.n_items))
  np.add.at(r, (dataset.arrays['train_user'], dataset.arrays['train_item']),
            1.0)
  return r


def _params(model) -> dict:
  return {'/'.join(map(str, k)): v for k, v in
          nnx.to_flat_state(nnx.state(model, nnx.Param))}


# --- the blockwise kNN --------------------------------------------------------


def _dense_knn(xp, x, k):
  """MMRec's build_knn_neighbourhood(build_sim(x), k), densely."""
  unit = x / xp.linalg.norm(x, axis=1, keepdims=True)
  sim = unit @ unit.T
  if xp is np:
    idx = np.argsort(-sim, axis=1, kind='stable')[:, :k]
    dense = np.zeros_like(sim)
    np.put_along_axis(dense, idx, np.take_along_axis(sim, idx, 1), 1)
    return dense
  vals, idx = jax.lax.top_k(sim, k)
  rows = jnp.arange(x.shape[0])[:, None]
  return jnp.zeros_like(sim).at[rows, idx].set(vals)


@pytest.mark.parametrize('block_size', [8, 64])
def test_blockwise_knn_matches_dense_topk_and_its_gradient(block_size):
  x = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
  cols, vals = graph.knn_from_embeddings_blockwise(jnp.asarray(x), 4,
                                                   block_size=block_size)
  want = _dense_knn(np, x.astype(np.float64), 4)
  np.testing.assert_array_equal(
      np.asarray(cols), np.argsort(-want, axis=1, kind='stable')[:, :4])
  got = np.zeros_like(want)
  np.put_along_axis(got, np.asarray(cols), np.asarray(vals), 1)
  np.testing.assert_allclose(got, want, atol=1e-6)

  # The gradient of the kept values, as torch.topk's on the dense matrix.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(37, 37)),
                  jnp.float32)

  def blockwise(x):
    c, v = graph.knn_from_embeddings_blockwise(x, 4, block_size=block_size)
    return jnp.sum(v * jnp.take_along_axis(w, c, 1))

  g = jax.grad(blockwise)(jnp.asarray(x))
  g_ref = jax.grad(lambda x: jnp.sum(_dense_knn(jnp, x, 4) * w))(
      jnp.asarray(x))
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_neighbour_csr_adds_repeated_columns():
  rng = np.random.default_rng(0)
  cols = rng.integers(0, 6, size=(6, 5))
  cols[0, :2] = 3  # A repeated column.
  vals = rng.normal(size=(6, 5)).astype(np.float32)
  dense = np.zeros((6, 6))
  np.add.at(dense, (np.repeat(np.arange(6), 5), cols.ravel()), vals.ravel())
  a, a_t = graph.neighbour_csr(jnp.asarray(cols), jnp.asarray(vals))
  x = rng.normal(size=(6, 3)).astype(np.float32)
  for kernel in sparse.KERNELS:
    np.testing.assert_allclose(sparse.spmm(a, x, kernel=kernel, a_t=a_t),
                               dense @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sparse.spmm(a_t, x, kernel=kernel, a_t=a),
                               dense.T @ x, rtol=1e-5, atol=1e-6)


# --- LATTICE --------------------------------------------------------------------


def _lattice_reference(xp, p, dataset, hp, batch):
  """LATTICE's forward and loss, dense, as MMRec's code reads."""
  r = _interactions(dataset)
  n_users, n_items = r.shape
  a = np.block([[np.zeros((n_users, n_users)), r],
                [r.T, np.zeros((n_items, n_items))]]) + np.eye(
                    n_users + n_items)
  prop = a / a.sum(1, keepdims=True)  # D^-1 (A + I)

  def laplacian(s):
    d = s.sum(1) ** -0.5
    return d[:, None] * s * d[None, :]

  feat_v, feat_t = dataset.arrays['feat_v'], dataset.arrays['feat_t']
  orig_v = laplacian(_dense_knn(np, feat_v.astype(np.float64), hp.knn_k))
  orig_t = laplacian(_dense_knn(np, feat_t.astype(np.float64), hp.knn_k))
  w = xp.exp(p['modal_weight']) / xp.sum(xp.exp(p['modal_weight']))
  fv = p['feat_v'] @ p['proj_v_w'] + p['proj_v_b']
  ft = p['feat_t'] @ p['proj_t_w'] + p['proj_t_b']
  learned = laplacian(w[0] * _dense_knn(xp, fv, hp.knn_k)
                      + w[1] * _dense_knn(xp, ft, hp.knn_k))
  item_adj = (1 - hp.lambda_coeff) * learned + hp.lambda_coeff * (
      w[0] * orig_v + w[1] * orig_t)
  h = p['item_emb']
  for _ in range(hp.n_layers):
    h = item_adj @ h
  x = xp.concatenate([p['user_emb'], p['item_emb']])
  layers = [x]
  for _ in range(hp.n_ui_layers):
    layers.append(prop @ layers[-1])
  out = sum(layers) / len(layers)
  users = out[:n_users]
  items = out[n_users:] + h / xp.linalg.norm(h, axis=1, keepdims=True)

  b = jax.tree.map(np.asarray, batch)
  keep = b.mask > 0
  u = users[b.users[keep]]
  pi, ni = items[b.pos_items[keep]], items[b.neg_items[keep]]
  diff = (u * pi).sum(1) - (u * ni).sum(1)
  bpr = xp.mean(xp.log(1.0 + xp.exp(-diff)))
  reg = hp.reg_weight * 0.5 * ((u ** 2).sum() + (pi ** 2).sum()
                               + (ni ** 2).sum()) / hp.batch_size
  return users, items, bpr, reg


def test_lattice_forward_and_loss_match_dense_numpy(tiny_dataset):
  dataset, hp, model, data = _built('lattice', tiny_dataset, knn_k=5,
                                    reg_weight=1e-2)
  p = {k: np.asarray(v, np.float64) for k, v in _params(model).items()}
  batch = _one_batch(dataset)
  users, items, bpr, reg = _lattice_reference(np, p, dataset, hp, batch)

  got_u, got_i = lattice.score(model, data, hp)
  np.testing.assert_allclose(got_u, users, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_i, items, rtol=1e-5, atol=1e-6)
  total, (parts, _) = lattice.loss(model, data, batch, None, hp)
  np.testing.assert_allclose(parts['bpr'], bpr, rtol=1e-5)
  np.testing.assert_allclose(parts['reg'], reg, rtol=1e-5)
  np.testing.assert_allclose(total, bpr + reg, rtol=1e-5)


def test_lattice_gradients_match_dense_reference(tiny_dataset):
  dataset, hp, model, data = _built('lattice', tiny_dataset, knn_k=5,
                                    reg_weight=1e-2)
  batch = _one_batch(dataset)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def ours(params, value_grad=True):
    m = nnx.merge(graphdef, params, rest)
    g = lattice.epoch_graph(m, hp)
    return lattice.loss_with_graph(m, data, batch, hp, g,
                                   value_grad=value_grad)[0]

  def reference(params):
    p = {'/'.join(map(str, k)): v for k, v in nnx.to_flat_state(params)}
    _, _, bpr, reg = _lattice_reference(jnp, p, dataset, hp, batch)
    return bpr + reg

  got = jax.grad(ours)(params)
  want = jax.grad(reference)(params)
  for (path, g), (_, w) in zip(nnx.to_flat_state(got),
                               nnx.to_flat_state(want)):
    np.testing.assert_allclose(g[...], w[...], rtol=2e-4, atol=1e-6,
                               err_msg=str(path))
  # The graph carries gradient into the projections (first batch upstream).
  assert np.abs(got['proj_v_w'][...]).max() > 0
  assert np.abs(got['modal_weight'][...]).max() > 0

  # Detached (every later batch upstream): same value, no gradient there.
  detached = jax.grad(lambda q: ours(q, value_grad=False))(params)
  np.testing.assert_allclose(ours(params, False), ours(params), rtol=1e-6)
  for name in ('proj_v_w', 'proj_t_b', 'feat_v', 'modal_weight'):
    assert not np.any(detached[name][...]), name
  np.testing.assert_allclose(detached['user_emb'][...],
                             got['user_emb'][...], rtol=1e-5, atol=1e-7)


def test_lattice_ui_graph_counts_repeated_rows_twice():
  # Users 0, 1; items 0, 1 (nodes 2, 3); user 0 has item 0 twice.
  u = np.array([0, 0, 0, 1])
  i = np.array([2, 2, 3, 3])
  rows = np.concatenate([u, i])
  cols = np.concatenate([i, u])
  order = np.lexsort((cols, rows))
  rows, cols = rows[order], cols[order]
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=4))])
  adj = sparse.csr_from_numpy(indptr, cols, np.ones(len(cols)))
  data = data_lib.DeviceData(*([None] * 2), adj, *([None] * 7))
  m, inv_sqrt = lattice.ui_graph(data)
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  got = inv_sqrt[:, None] * sparse.spmm(m, x / inv_sqrt[:, None]) + (
      x * (inv_sqrt ** 2)[:, None])
  a = np.zeros((4, 4))
  np.add.at(a, (rows, cols), 1.0)
  a += np.eye(4)
  np.testing.assert_allclose(got, (a / a.sum(1, keepdims=True)) @ x,
                             rtol=1e-5, atol=1e-6)


# --- MMGCN ----------------------------------------------------------------------


def _leaky(xp, x):
  return xp.where(x > 0, x, 0.01 * x)


def _mmgcn_reference(xp, p, c, dataset, batch, reg_weight):
  """MMGCN's forward and loss with a dense mean-aggregation matrix."""
  r = (_interactions(dataset) > 0).astype(np.float64)  # distinct pairs
  n_users, n_items = r.shape
  a = np.block([[np.zeros((n_users, n_users)), r],
                [r.T, np.zeros((n_items, n_items))]])
  mean = a / np.maximum(a.sum(1, keepdims=True), 1.0)
  outs = []
  for m, feats in (('v', dataset.arrays['feat_v']),
                   ('t', dataset.arrays['feat_t'])):
    g = lambda name: p[f'gcn_{m}/{name}']
    feats = feats.astype(np.float64)
    item_x = feats @ g('mlp_w') + g('mlp_b') if m == 'v' else feats
    x = xp.concatenate([c[f'pref_{m}'], item_x])
    x = x / xp.linalg.norm(x, axis=1, keepdims=True)
    for layer in (1, 2, 3):
      h = _leaky(xp, mean @ (x @ g(f'conv{layer}_w')))
      x_hat = _leaky(xp, x @ g(f'lin{layer}_w') + g(f'lin{layer}_b')) + c['id']
      x = _leaky(xp, xp.concatenate([h, x_hat], 1) @ g(f'g{layer}_w')
                 + g(f'g{layer}_b'))
    outs.append(x)
  rep = (outs[0] + outs[1]) / 2
  b = jax.tree.map(np.asarray, batch)
  keep = b.mask > 0
  users, pos, neg = (b.users[keep], n_users + b.pos_items[keep],
                     n_users + b.neg_items[keep])
  diff = (rep[users] * rep[pos]).sum(1) - (rep[users] * rep[neg]).sum(1)
  bpr = -xp.mean(xp.log(1.0 / (1.0 + xp.exp(-diff))))
  user_t = np.repeat(users, 2)
  item_t = np.stack([pos, neg], 1).ravel()
  reg = ((c['id'][user_t] ** 2 + c['id'][item_t] ** 2).mean()
         + (c['pref_v'] ** 2).mean())
  return rep, bpr, reg_weight * reg


def _mmgcn_constants(model):
  return {'id': np.asarray(model.id_emb[...], np.float64),
          'pref_v': np.asarray(model.gcn_v.preference[...], np.float64),
          'pref_t': np.asarray(model.gcn_t.preference[...], np.float64)}


def test_mmgcn_forward_and_loss_match_dense_numpy(tiny_dataset):
  dataset, hp, model, data = _built('mmgcn', tiny_dataset, reg_weight=0.1)
  p = {k: np.asarray(v, np.float64) for k, v in _params(model).items()}
  c = _mmgcn_constants(model)
  batch = _one_batch(dataset)
  rep, bpr, reg = _mmgcn_reference(np, p, c, dataset, batch, 0.1)
  users, items = mmgcn.score(model, data, hp)
  np.testing.assert_allclose(np.concatenate([users, items]), rep, rtol=1e-4,
                             atol=1e-6)
  total, (parts, (lu, li)) = mmgcn.loss(model, data, batch, None, hp)
  np.testing.assert_allclose(parts['bpr'], bpr, rtol=1e-5)
  np.testing.assert_allclose(parts['reg'], reg, rtol=1e-5)
  np.testing.assert_allclose(total, bpr + reg, rtol=1e-5)
  np.testing.assert_array_equal(lu, users)  # 'last_step' ranks these.
  # Upstream trains neither the ID table nor the preferences.
  names = set(_params(model))
  assert not any('preference' in n or 'id_emb' in n for n in names), names
  assert 'gcn_t/mlp_w' not in names and 'gcn_v/mlp_w' in names


def test_mmgcn_gradients_match_dense_reference(tiny_dataset):
  dataset, hp, model, data = _built('mmgcn', tiny_dataset, reg_weight=0.1)
  batch = _one_batch(dataset)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  c = {k: jnp.asarray(v, jnp.float32)
       for k, v in _mmgcn_constants(model).items()}

  def ours(params):
    return mmgcn.loss(nnx.merge(graphdef, params, rest), data, batch, None,
                      hp)[0]

  def reference(params):
    p = {'/'.join(map(str, k)): v for k, v in nnx.to_flat_state(params)}
    _, bpr, reg = _mmgcn_reference(jnp, p, c, dataset, batch, 0.1)
    return bpr + reg

  got, want = jax.grad(ours)(params), jax.grad(reference)(params)
  for (path, g), (_, w) in zip(nnx.to_flat_state(got),
                               nnx.to_flat_state(want)):
    scale = np.abs(w[...]).max()
    assert scale > 0, path  # Every trainable tensor gets a gradient.
    np.testing.assert_allclose(g[...], w[...], rtol=1e-3, atol=1e-4 * scale,
                               err_msg=str(path))


def test_mmgcn_mean_graph_counts_repeated_rows_once():
  u = np.array([0, 0, 0, 1])
  i = np.array([2, 2, 3, 3])
  rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
  order = np.lexsort((cols, rows))
  rows, cols = rows[order], cols[order]
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=4))])
  adj = sparse.csr_from_numpy(indptr, cols, np.ones(len(cols)))
  m, m_t = mmgcn.mean_graph(adj)
  a = np.zeros((4, 4))
  a[rows, cols] = 1.0
  want = a / a.sum(1, keepdims=True)
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  for kernel in sparse.KERNELS:
    np.testing.assert_allclose(sparse.spmm(m, x, kernel=kernel, a_t=m_t),
                               want @ x, rtol=1e-5, atol=1e-6)
  # The backward pass (Mᵀ g) of the 'csr' kernel.
  g = jax.grad(lambda x: jnp.sum(sparse.spmm(m, x, a_t=m_t) ** 2))(x)
  np.testing.assert_allclose(g, 2 * want.T @ (want @ x), rtol=1e-5,
                             atol=1e-6)


# --- training through the shared trainer -----------------------------------------


@pytest.mark.parametrize('model', ['mmgcn', 'lattice'])
def test_trains_through_the_shared_trainer(tiny_dataset, tmp_path, model):
  config = _config(model, tiny_dataset)
  config.train_batch_size = 64
  config.epochs = 4
  config.learning_rate = 1e-2
  result = train.train_and_evaluate(config, tmp_path)
  log = rundirs.read_metrics(tmp_path)
  assert len(log) == result['epochs_run'] == 4
  bpr = [r['loss']['bpr'] for r in log]
  assert bpr[-1] < 0.95 * bpr[0], bpr
  assert all(math.isfinite(sum(r['loss'].values())) for r in log)
  assert result['valid']['recall@20'] > 0

"""LayerGCN against an independent numpy float64 reading of MMRec's code.

MMRec's src/models/layergcn.py, re-derived densely: the graph of distinct
training pairs, the cosine-refined layers summed without layer 0, the
sum-form BPR and ego L2, gradients by central differences, one Adam step,
and the per-epoch pruning: exactly int(E (1 - p)) edges, drawn like
`torch.multinomial` on even epochs and `random.sample` on odd ones,
re-normalized with the kept degrees; a resumed run keeps the alternation.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest
from configs import tiny
from data_prep import graphs
from mentor_jax import data as data_lib
from mentor_jax import family as family_lib
from mentor_jax import rundirs
from mentor_jax import train
from mentor_jax.models import layergcn
from mentor_jax.ops import pruning
from mentor_jax.ops import sparse

EPS_DEGREE = 1e-7  # MMRec's, added to every degree.


# --------------------------------------------------- numpy references ---


def _norm_adj(users, items, n_users, n_items):
  """MMRec's normalized graph over the (user, item) pairs given, densely.

  Assignment de-duplicates, as the dict in `get_norm_adj_mat`; degrees are
  (A > 0) counts + 1e-7, as there and in `_normalize_adj_m`.
  """
  n = n_users + n_items
  a = np.zeros((n, n))
  a[users, n_users + items] = 1.0
  a[n_users + items, users] = 1.0
  d = (a.sum(1) + EPS_DEGREE) ** -0.5
  return d[:, None] * a * d[None, :]


def _dense(csr):
  """A stored `Csr` as a dense float64 matrix (repeated entries add up)."""
  out = np.zeros(csr.shape)
  np.add.at(out, (np.asarray(csr.rows), np.asarray(csr.indices)),
            np.asarray(csr.values, np.float64))
  return out


def _norm(x):
  # max(|x|, 1e-8) as F.cosine_similarity clamps each norm.
  return np.sqrt(np.maximum((x * x).sum(-1), 1e-16))


def _propagate(user_emb, item_emb, adj, n_layers):
  """MMRec's forward(): cosine-refined layers, summed over l = 1..L."""
  ego = np.concatenate([user_emb, item_emb])
  x, out = ego, np.zeros_like(ego)
  for _ in range(n_layers):
    y = adj @ x
    x = ((y * ego).sum(-1) / (_norm(y) * _norm(ego)))[:, None] * y
    out = out + x
  return out[:len(user_emb)], out[len(user_emb):]


def _loss(params, adj, batch, reg_weight, n_layers):
  """calculate_loss: (sum of -ln σ(pos - neg), reg_weight * L2Loss(ego))."""
  users, items = _propagate(params['user_emb'], params['item_emb'], adj,
                            n_layers)
  keep = batch.mask > 0  # MMRec's last batch is short, not padded.
  u, p, n = batch.users[keep], batch.pos_items[keep], batch.neg_items[keep]
  diff = (users[u] * items[p]).sum(-1) - (users[u] * items[n]).sum(-1)
  bpr = np.logaddexp(0.0, -diff).sum()
  ego = (params['user_emb'][u], params['item_emb'][p], params['item_emb'][n])
  return bpr, reg_weight * sum(0.5 * (x ** 2).sum() for x in ego)


def _numeric_grad(params, f, eps=1e-6):
  """Central differences of f(params) for every entry, float64."""
  out = {}
  for name, value in params.items():
    g = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
      hi, lo = value.copy(), value.copy()
      hi[idx] += eps
      lo[idx] -= eps
      g[idx] = (f({**params, name: hi}) - f({**params, name: lo})) / (2 * eps)
    out[name] = g
  return out


def _successive_sampling(w, n_keep, n_draws, rng):
  """Inclusion frequencies of torch.multinomial(w, n_keep) (no
  replacement: each next draw ~ w among the entries left), simulated."""
  avail = np.ones((n_draws, len(w)))
  rows = np.arange(n_draws)
  for _ in range(n_keep):
    cdf = np.cumsum(avail * w, axis=1)
    u = (1.0 - rng.random(n_draws)) * cdf[:, -1]  # in (0, total]
    avail[rows, (cdf < u[:, None]).sum(1)] = 0.0
  return 1.0 - avail.mean(0)


def _exact_inclusion(w, n_keep):
  """P(entry drawn) for torch.multinomial(w, n_keep), by enumeration."""
  out = np.zeros(len(w))
  for seq in itertools.permutations(np.flatnonzero(w > 0), n_keep):
    p, left = 1.0, w.sum()
    for j in seq:
      p *= w[j] / left
      left -= w[j]
    out[list(seq)] += p
  return out


# ------------------------------------------------------------ helpers ---


def _built(npz, **overrides):
  b = conftest.build_baseline('layergcn', npz, embedding_size=8, **overrides)
  return b.dataset, b.hp, b.model, b.data


def _batch(dataset, batch_size=32, seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, batch_size, replace=False)
  users = dataset.arrays['train_user'][rows].copy()
  items = dataset.arrays['train_item'][rows].copy()
  users[1], items[1] = users[0], items[0]  # A repeated row, as real batches.
  mask = np.ones(batch_size, np.float32)
  mask[-3:] = 0.0  # Padding rows must not count.
  return data_lib.Batches(users, items,
                          rng.integers(0, dataset.n_items, batch_size), mask)


def _params(model):
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return {k: np.asarray(v, np.float64)
          for k, v in nnx.to_pure_dict(params).items()}


def _context(model, data, hp, epoch):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ctx = family_lib.EpochContext(
      layergcn.LAYERGCN_FAMILY, graphdef, rest, data, hp,
      layergcn.LAYERGCN_FAMILY.make_optimizer(hp), epoch=jnp.int32(epoch))
  return ctx, params


def _pruned_graphs(model, data, hp, epoch, n_draws, seed=0):
  """epoch_setup's graph values for n_draws keys: [n_draws, nnz]."""
  ctx, params = _context(model, data, hp, epoch)
  keys = jax.random.split(jax.random.PRNGKey(seed), n_draws)
  return np.asarray(jax.jit(jax.vmap(
      lambda k: layergcn.epoch_setup(ctx, params, None, k).aux.values))(keys))


def _kept_pairs(values, adj, n_users):
  """(users, items) of the user-half entries with a non-zero value."""
  half = adj.nnz // 2
  kept = values[:half] > 0
  return (np.asarray(adj.rows[:half])[kept],
          np.asarray(adj.indices[:half])[kept] - n_users)


def _tolerance(p, n_draws, sigmas=5.0):
  """A frequency over n_draws draws lies within sigmas standard errors."""
  return sigmas * np.sqrt(p * (1 - p) / n_draws) + 1e-12


# ----------------------------------------------------------- the graph ---


@pytest.fixture(scope='module')
def repeated_rows():
  """3 users, 3 items; user 0 has item 0 twice (data_prep keeps repeats)."""
  users = np.array([0, 0, 0, 1, 1, 2, 2])
  items = np.array([0, 0, 1, 1, 2, 0, 2])
  indptr, indices, values = graphs.normalized_adjacency(users, items, 3, 3)
  adj = sparse.csr_from_numpy(indptr, indices, values)
  train_indptr = np.array([0, 3, 5, 7], np.int32)
  data = data_lib.DeviceData(None, None, adj, None, None, users, items,
                             jnp.asarray(train_indptr), jnp.asarray(items),
                             None)
  return users, items, train_indptr, data


def test_the_graph_is_the_distinct_pairs(repeated_rows):
  users, items, train_indptr, data = repeated_rows
  assert pruning.has_bipartite_layout(np.asarray(data.adj.indptr),
                                      np.asarray(data.adj.indices), 3)
  # The repeated row is the second stored entry of user 0.
  np.testing.assert_array_equal(pruning.distinct_edges(data.adj),
                                [1, 0, 1, 1, 1, 1, 1])
  assert layergcn.distinct_pair_count(train_indptr, items) == 6
  np.testing.assert_allclose(_dense(layergcn.full_graph(data.adj, 3)),
                             _norm_adj(users, items, 3, 3), rtol=1e-6)


@pytest.mark.parametrize('epoch', [0, 1])
def test_pruning_never_keeps_a_repeated_row(repeated_rows, epoch):
  users, items, _, data = repeated_rows
  model = layergcn.LayerGCN(3, 3, 4, n_edges=6, rngs=nnx.Rngs(params=0))
  # E = 6 distinct pairs: int(6 * 0.6) = 3 kept (the 7 stored rows: 4).
  values = _pruned_graphs(model, data, layergcn.Hparams(dropout=0.4), epoch,
                          200)
  assert (values[:, 1] == 0).all()  # the repeat
  assert ((values[:, :7] > 0).sum(1) == 3).all()
  for v in values[:5]:
    got = data.adj.with_values(jnp.asarray(v))
    u, i = _kept_pairs(v, data.adj, 3)
    np.testing.assert_allclose(_dense(got), _norm_adj(u, i, 3, 3), rtol=1e-6)


# ------------------------------------------------ forward, loss, grads ---


@pytest.mark.parametrize('n_layers', [1, 4])
def test_scores_are_the_refined_sum_on_the_full_graph(tiny_dataset, n_layers):
  dataset, hp, model, data = _built(tiny_dataset, n_layers=n_layers)
  users, items = layergcn.LAYERGCN_FAMILY.score(model, data, hp)
  adj = _norm_adj(dataset.arrays['train_user'], dataset.arrays['train_item'],
                  dataset.n_users, dataset.n_items)
  p = _params(model)
  want_u, want_i = _propagate(p['user_emb'], p['item_emb'], adj, n_layers)
  np.testing.assert_allclose(users, want_u, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(items, want_i, rtol=2e-5, atol=1e-6)
  # MMRec ranks a fresh forward (full_sort_predict), as 'recompute' does.
  config = conftest.baseline_config('layergcn', tiny_dataset)
  assert config.eval_embeddings == 'recompute'


def test_loss_is_the_sum_form_bpr_plus_ego_l2(tiny_dataset):
  dataset, hp, model, data = _built(tiny_dataset, reg_weight=0.1)
  batch = _batch(dataset)
  total, (parts, (users, items)) = layergcn.loss(
      model, data, jax.tree.map(jnp.asarray, batch), None, hp)
  adj = _norm_adj(dataset.arrays['train_user'], dataset.arrays['train_item'],
                  dataset.n_users, dataset.n_items)
  bpr, reg = _loss(_params(model), adj, batch, 0.1, hp.n_layers)
  np.testing.assert_allclose(parts['bpr'], bpr, rtol=1e-5)
  np.testing.assert_allclose(parts['reg'], reg, rtol=1e-5)
  np.testing.assert_allclose(total, bpr + reg, rtol=1e-5)
  assert set(parts) == {'bpr', 'reg'}
  np.testing.assert_array_equal(
      users, layergcn.LAYERGCN_FAMILY.score(model, data, hp)[0])


def _one_epoch_graph(model, data, hp, epoch=0):
  ctx, params = _context(model, data, hp, epoch)
  return ctx, params, layergcn.epoch_setup(ctx, params, None,
                                           jax.random.PRNGKey(1)).aux


@pytest.mark.parametrize('dropout', [0.2, 0.8])
def test_gradients_on_the_pruned_graph_match_finite_differences(
    tiny_dataset, dropout):
  # dropout 0.8 leaves nodes without edges: cos(0, x0) = 0, finite gradient.
  dataset, hp, model, data = _built(tiny_dataset, dropout=dropout)
  _, _, aux = _one_epoch_graph(model, data, hp)
  adj = _norm_adj(*_kept_pairs(np.asarray(aux.values), aux, dataset.n_users),
                  dataset.n_users, dataset.n_items)
  np.testing.assert_allclose(_dense(aux), adj, rtol=1e-5, atol=1e-7)
  batch = _batch(dataset, seed=1)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.jit(jax.grad(lambda p: layergcn.loss(
      nnx.merge(graphdef, p, rest), data, jax.tree.map(jnp.asarray, batch),
      None, hp, aux)[0]))(params)
  grads = nnx.to_pure_dict(grads)
  want = _numeric_grad(_params(model), lambda p: sum(
      _loss(p, adj, batch, hp.reg_weight, hp.n_layers)))
  for name, g in want.items():
    got = np.asarray(grads[name], np.float64)
    assert np.isfinite(got).all(), name
    np.testing.assert_allclose(got, g, rtol=1e-3, atol=1e-5 * abs(g).max(),
                               err_msg=name)


def test_one_adam_step_on_the_epoch_graph(tiny_dataset):
  dataset, hp, model, data = _built(tiny_dataset, dropout=0.2)
  # MMRec's trainer: Adam at overall.yaml's 1e-3, weight decay 0 (a small
  # coupled L2 would not show in a first Adam step, which is ~ lr sign(g)).
  assert hp.learning_rate == 1e-3
  assert layergcn.LAYERGCN_FAMILY.make_optimizer is family_lib.adam
  ctx, params, aux = _one_epoch_graph(model, data, hp)
  ctx = ctx._replace(aux=aux)
  batch = _batch(dataset, seed=2)
  out = layergcn.LAYERGCN_FAMILY.train_step(
      ctx, params, ctx.tx.init(params), jax.tree.map(jnp.asarray, batch),
      jax.random.PRNGKey(0), 0)
  adj = _norm_adj(*_kept_pairs(np.asarray(aux.values), aux, dataset.n_users),
                  dataset.n_users, dataset.n_items)
  p0 = _params(model)
  g = _numeric_grad(p0, lambda p: sum(
      _loss(p, adj, batch, hp.reg_weight, hp.n_layers)))
  new = nnx.to_pure_dict(out.params)
  for name, value in p0.items():
    # torch's Adam, first step: m̂ = g, v̂ = g², step lr m̂ / (sqrt(v̂) + eps).
    want = value - 1e-3 * g[name] / (np.abs(g[name]) + 1e-8)
    clear = np.abs(g[name]) > 1e-4  # where the sign is not round-off
    assert clear.mean() > 0.5, name
    np.testing.assert_allclose(np.asarray(new[name])[clear], want[clear],
                               rtol=1e-6, atol=1e-7, err_msg=name)


# ------------------------------------------------------ the samplers ---


def test_gumbel_top_k_draws_like_torch_multinomial():
  w = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 0.0, 1.5])  # 0: a repeated row
  n_keep, n_draws = 4, 20000
  keys = jax.random.split(jax.random.PRNGKey(0), n_draws)
  for weights in (w, (w > 0).astype(float)):  # degree-sensitive, uniform
    log_w = jnp.log(jnp.asarray(weights, jnp.float32))
    masks = np.asarray(jax.jit(jax.vmap(
        lambda k: pruning.sample_edges(log_w, n_keep, k)))(keys))
    assert ((masks == 0) | (masks == 1)).all()
    assert (masks.sum(1) == n_keep).all()
    want = _exact_inclusion(weights, n_keep)
    assert abs(want.sum() - n_keep) < 1e-12
    np.testing.assert_array_less(np.abs(masks.mean(0) - want),
                                 _tolerance(want, n_draws))


def test_epoch_setup_alternates_degree_sensitive_and_uniform(tiny_dataset):
  dropout, n_draws = 0.2, 4000
  dataset, hp, model, data = _built(tiny_dataset, dropout=dropout)
  n_edges = dataset.n_train  # the synthetic rows are distinct pairs
  assert model.n_edges == n_edges == int(pruning.distinct_edges(
      data.adj).sum())
  n_keep = int(n_edges * (1 - dropout))
  full = np.asarray(layergcn.full_graph(data.adj, dataset.n_users).values)
  w = full[:n_edges].astype(np.float64)  # MMRec's edge_values
  degree = _successive_sampling(w, n_keep, n_draws,
                                np.random.default_rng(0))
  uniform = np.full(n_edges, n_keep / n_edges)
  tol = 5 * np.sqrt(degree * (1 - degree) * 2 / n_draws) + 1e-12
  # The test can tell the two apart.
  assert np.abs(degree - uniform).max() > 4 * tol.max()
  for epoch in range(4):
    values = _pruned_graphs(model, data, hp, epoch, n_draws, seed=epoch)
    kept = values[:, :n_edges] > 0
    assert (kept.sum(1) == n_keep).all()
    freq = kept.mean(0)
    if epoch % 2 == 0:
      np.testing.assert_array_less(np.abs(freq - degree), tol,
                                   err_msg=f'epoch {epoch}')
    else:
      np.testing.assert_array_less(np.abs(freq - uniform),
                                   _tolerance(uniform, n_draws),
                                   err_msg=f'epoch {epoch}')
    for v in values[:2]:  # re-normalized with the kept degrees, mirrored
      u, i = _kept_pairs(v, data.adj, dataset.n_users)
      np.testing.assert_allclose(
          _dense(data.adj.with_values(jnp.asarray(v))),
          _norm_adj(u, i, dataset.n_users, dataset.n_items),
          rtol=1e-5, atol=1e-7)


def test_dropout_zero_trains_on_the_full_graph(tiny_dataset):
  dataset, hp, model, data = _built(tiny_dataset)
  assert (hp.dropout, hp.n_layers, hp.reg_weight) == (0.0, 4, 1e-2)
  full = _dense(layergcn.full_graph(data.adj, dataset.n_users))
  for epoch in (0, 1):
    _, _, aux = _one_epoch_graph(model, data, hp, epoch)
    np.testing.assert_array_equal(_dense(aux), full)


# ------------------------------------------------------------ resume ---


def _config(npz, **overrides):
  config = tiny.get_config('layergcn')
  config.data_npz = str(npz)
  config.learning_rate = 1e-2
  config.dropout = 0.2
  for key, value in overrides.items():
    config[key] = value
  return config


def test_a_run_resumed_after_an_odd_epoch_keeps_the_alternation(
    tiny_dataset, tmp_path):
  train.train_and_evaluate(_config(tiny_dataset, epochs=4), tmp_path / 'a')
  train.train_and_evaluate(_config(tiny_dataset, epochs=1), tmp_path / 'b')
  train.train_and_evaluate(_config(tiny_dataset, epochs=4), tmp_path / 'b')
  straight = rundirs.read_metrics(tmp_path / 'a')
  resumed = rundirs.read_metrics(tmp_path / 'b')
  assert [r['epoch'] for r in straight] == [r['epoch'] for r in resumed] == [
      0, 1, 2, 3]
  for a, b in zip(straight, resumed):
    for name, value in a['loss'].items():
      assert math.isfinite(value)
      assert value == pytest.approx(b['loss'][name], rel=1e-6), (
          a['epoch'], name)
    assert a['valid'] == pytest.approx(b['valid'], abs=1e-9)
  assert straight[-1]['loss']['bpr'] < straight[0]['loss']['bpr']

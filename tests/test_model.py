"""The MENTOR module and its pure forward functions against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mentor_jax import data as data_lib
from mentor_jax.models.mentor import model as model_lib
from mentor_jax.models.mentor import objective
from mentor_jax.ops import sparse

U, I, DV, DT = 7, 5, 12, 6


def _graph(rng):
  """A small bipartite graph with a duplicate pair and an isolated item."""
  pairs = np.array([[0, 0], [0, 1], [1, 1], [2, 2], [3, 0], [3, 0], [4, 3],
                    [5, 2], [6, 1]])
  n = U + I
  a = np.zeros((n, n))
  for u, i in pairs:
    a[u, U + i] += 1
    a[U + i, u] += 1
  deg = a.sum(1)
  dinv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0)
  a_hat = dinv[:, None] * a * dinv[None, :]
  rows, cols = np.nonzero(a)
  # Multi-edges are separate CSR entries, as data_prep stores them.
  reps = a[rows, cols].astype(int)
  rows, cols = np.repeat(rows, reps), np.repeat(cols, reps)
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
  csr = sparse.csr_from_numpy(indptr, cols, (dinv[rows] * dinv[cols]))
  knn_v = rng.integers(0, I, (I, 2)).astype(np.int32)
  knn_t = rng.integers(0, I, (I, 2)).astype(np.int32)
  return a_hat, csr, knn_v, knn_t


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _reference_encoder(enc, feat, a_hat):
  """MENTOR_SPEC §1.4 for one clean encoder, in float64 numpy."""
  p = np.asarray(enc.preference[...], np.float64)
  w1, b1 = (np.asarray(enc.w1[...], np.float64),
            np.asarray(enc.b1[...], np.float64))
  w2, b2 = (np.asarray(enc.w2[...], np.float64),
            np.asarray(enc.b2[...], np.float64))
  h = feat @ w1 + b1
  z = np.where(h > 0, h, 0.01 * h) @ w2 + b2
  x = _normalize(np.concatenate([p, z]))
  h1 = a_hat @ x
  return x + h1 + a_hat @ h1


def _dense_s(knn_v, knn_t, w=0.1):
  s = np.zeros((I, I))
  for i in range(I):
    for j in knn_v[i]:
      s[i, j] += w / knn_v.shape[1]
    for j in knn_t[i]:
      s[i, j] += (1 - w) / knn_t.shape[1]
  return s


@pytest.fixture
def setup():
  rng = np.random.default_rng(0)
  a_hat, csr, knn_v, knn_t = _graph(rng)
  feat_v = rng.standard_normal((I, DV)).astype(np.float32)
  feat_t = rng.standard_normal((I, DT)).astype(np.float32)
  model = model_lib.Mentor(U, I, DV, DT, rngs=nnx.Rngs(params=0))
  return model, a_hat, csr, knn_v, knn_t, feat_v, feat_t


def test_clean_encoders_match_numpy(setup):
  model, a_hat, csr, knn_v, knn_t, feat_v, feat_t = setup
  emb = model_lib.forward(model, jnp.asarray(feat_v), jnp.asarray(feat_t),
                          csr, jnp.asarray(knn_v), jnp.asarray(knn_t),
                          jax.random.PRNGKey(0))
  s = _dense_s(knn_v, knn_t)
  feats = {'v': feat_v, 't': feat_t, 'id': np.asarray(model.id_feat[...])}
  for idx, name in enumerate(model_lib.CLEAN):
    e = _reference_encoder(model.encoders[name], feats[name], a_hat)
    np.testing.assert_allclose(emb.users[:, idx], e[:U], rtol=2e-5,
                               atol=2e-6)
    items = e[U:] + s @ e[U:]
    np.testing.assert_allclose(emb.items[:, idx], items, rtol=2e-5,
                               atol=2e-6)


def test_fused_item_mlps_equal_separate_ones(setup):
  model, *_, feat_v, _ = setup
  names = ['v', 'v_n1', 'v_n2']
  fused = model_lib.item_mlps(jnp.asarray(feat_v),
                              [model.encoders[n] for n in names])
  for j, n in enumerate(names):
    alone = model_lib.item_mlps(jnp.asarray(feat_v), [model.encoders[n]])
    np.testing.assert_allclose(fused[:, j], alone[:, 0], rtol=1e-6,
                               atol=1e-6)


def test_noise_is_sign_aligned_with_norm_eps():
  rng = np.random.default_rng(1)
  h = rng.standard_normal((50, 3, 8)).astype(np.float32)
  h[0] = 0.0  # A zero-degree node receives no noise (sign(0) = 0).
  out = np.asarray(model_lib.perturb(jnp.asarray(h), jax.random.PRNGKey(0),
                                     0.1))
  delta = out - h
  np.testing.assert_array_equal(delta[0], 0)
  np.testing.assert_allclose(np.linalg.norm(delta[1:], axis=-1), 0.1,
                             rtol=1e-5)
  assert np.all(delta[1:] * np.sign(h[1:]) >= 0)


def test_perturbed_encoders_differ_only_by_noise(setup):
  model, a_hat, csr, knn_v, knn_t, feat_v, feat_t = setup
  # Give v_n1 the parameters of v: with eps = 0 their outputs must agree.
  src = model.encoders['v']
  for field in ('preference', 'w1', 'b1', 'w2', 'b2'):
    getattr(model.encoders['v_n1'], field)[...] = getattr(src, field)[...]
  args = (model, jnp.asarray(feat_v), jnp.asarray(feat_t), csr,
          jnp.asarray(knn_v), jnp.asarray(knn_t), jax.random.PRNGKey(0))
  v, n1 = 0, model_lib.encoder_index(model, 'v_n1')
  clean = model_lib.forward(*args, noise_eps=0.0)
  np.testing.assert_allclose(clean.users[:, v], clean.users[:, n1],
                             rtol=1e-6, atol=1e-6)
  noisy = model_lib.forward(*args, noise_eps=0.1)
  np.testing.assert_allclose(noisy.users[:, v], clean.users[:, v], atol=0)
  assert not np.allclose(noisy.users[:, n1], clean.users[:, n1])


def test_parameter_count_and_init(setup):
  model = setup[0]
  per_enc = lambda f: U * 64 + f * 256 + 256 + 256 * 64 + 64
  want = (3 * per_enc(DV) + 3 * per_enc(DT) + per_enc(64) + I * 64 + U * 2
          + 128 * 128 + 128)
  params = nnx.state(model, nnx.Param)
  got = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert got == want
  w = np.asarray(model.weight_u[...])
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
  light = model_lib.Mentor(U, I, DV, DT, perturbed=False,
                           rngs=nnx.Rngs(params=0))
  got = sum(x.size for x in
            jax.tree_util.tree_leaves(nnx.state(light, nnx.Param)))
  assert got == want - 2 * per_enc(DV) - 2 * per_enc(DT)


def test_views_follow_the_spec(setup):
  model, a_hat, csr, knn_v, knn_t, feat_v, feat_t = setup
  emb = model_lib.forward(model, jnp.asarray(feat_v), jnp.asarray(feat_t),
                          csr, jnp.asarray(knn_v), jnp.asarray(knn_t),
                          jax.random.PRNGKey(0))
  v = model_lib.build_views(emb)
  w = np.asarray(emb.weight_u)
  u, i = np.asarray(emb.users), np.asarray(emb.items)
  np.testing.assert_allclose(
      v.fused_u, np.concatenate([w[:, :1] * u[:, 0], w[:, 1:] * u[:, 1]], 1))
  np.testing.assert_allclose(v.fused_i, np.concatenate([i[:, 0], i[:, 1]], 1))
  np.testing.assert_allclose(v.ident_i, np.concatenate([i[:, 2], i[:, 2]], 1))
  (n1u, n1i), _ = model_lib.noise_views(emb)
  np.testing.assert_allclose(
      n1u, np.concatenate([w[:, :1] * u[:, 3], w[:, 1:] * u[:, 5]], 1))
  np.testing.assert_allclose(n1i, np.concatenate([i[:, 3], i[:, 5]], 1))


def _grads(setup, **hp):
  model, a_hat, csr, knn_v, knn_t, feat_v, feat_t = setup
  users = np.array([0, 1, 3, 3], np.int32)
  batch = data_lib.Batches(jnp.asarray(users), jnp.asarray([0, 1, 0, 0]),
                           jnp.asarray([2, 3, 4, 1]), jnp.ones(4))
  data = data_lib.DeviceData(
      jnp.asarray(feat_v), jnp.asarray(feat_t), csr, jnp.asarray(knn_v),
      jnp.asarray(knn_t), *[jnp.zeros(1, jnp.int32)] * 5)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  hparams = objective.Hparams(infonce_block_size=4, **hp)

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    return objective.mentor_loss(m, data, batch, jax.random.PRNGKey(0),
                                 hparams)[0]

  return jax.grad(loss)(params)


def _norm(tree):
  return sum(float(jnp.sum(x ** 2)) for x in jax.tree_util.tree_leaves(tree))


def test_gradient_map_of_section_2_6(setup):
  g = _grads(setup)
  # The feature-masking predictor never receives a gradient.
  assert _norm(g['mask_w']) == 0 and _norm(g['mask_b']) == 0
  for name in ('v', 't', 'id', 'v_n1', 't_n2'):
    assert _norm(g['encoders'][name]) > 0, name
  assert _norm(g['id_feat']) > 0
  # Without the alignment loss the ID branch gets nothing.
  g = _grads(setup, align_weight=0.0)
  assert _norm(g['encoders']['id']) == 0 and _norm(g['id_feat']) == 0
  # Without the InfoNCE the noise encoders get nothing.
  g = _grads(setup, mask_weight_g=0.0)
  assert _norm(g['encoders']['v_n1']) == 0
  assert _norm(g['encoders']['t_n2']) == 0


def test_uniform_rows_blockwise():
  key = jax.random.PRNGKey(5)
  # Up to one block it is jax.random.uniform itself.
  np.testing.assert_array_equal(
      model_lib.uniform_rows(key, (7, 3), block_rows=8),
      jax.random.uniform(key, (7, 3)))
  x = np.asarray(model_lib.uniform_rows(key, (1000, 4, 8), block_rows=64))
  assert x.shape == (1000, 4, 8) and x.dtype == np.float32
  assert 0.0 <= x.min() and x.max() < 1.0
  # U(0, 1) moments over 32k draws (5 sigma bounds), and the blocks are not
  # copies of each other.
  assert abs(x.mean() - 0.5) < 5 * np.sqrt(1 / 12 / x.size)
  assert abs(x.var() - 1 / 12) < 0.01
  assert not np.allclose(x[:64], x[64:128])
  np.testing.assert_array_equal(  # deterministic
      x, model_lib.uniform_rows(key, (1000, 4, 8), block_rows=64))

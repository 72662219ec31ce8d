"""MRLib's DiffMM port (a two-tower multimodal LightGCN, no diffusion)
against a numpy float64 reading of MRLib's src/models/diffmm.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest
from mentor_jax import data as data_lib
from mentor_jax.models import diffmm_mrlib


def _np(x):
  return np.asarray(x, np.float64)


def _nrm(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_adj(dataset):
  """MRLib's get_norm_adj_mat: no self-loops, degrees + 1e-7."""
  u, i = dataset.arrays['train_user'], dataset.arrays['train_item']
  n_u, n = dataset.n_users, dataset.n_users + dataset.n_items
  a = np.zeros((n, n))
  a[u, n_u + i] = 1.0
  a[n_u + i, u] = 1.0
  d = (a.sum(1) + 1e-7) ** -0.5
  return d[:, None] * a * d[None, :]


def _np_loss(p, dataset, adj, batch, hp):
  eu, ei = p['user_emb'], p['item_emb']
  n_u = eu.shape[0]
  w = np.exp(p['modal_weight']) / np.exp(p['modal_weight']).sum()
  modal = 0.0
  for k, m in enumerate('vt'):
    f = _np(dataset.arrays[f'feat_{m}']) @ p[f'trans_{m}_w'] + (
        p[f'trans_{m}_b'])
    x = adj @ np.concatenate([eu, _nrm(f)])
    x = x + adj @ np.concatenate([x[:n_u], ei])
    modal = modal + w[k] * (x + 0.2 * adj @ np.concatenate([eu, ei]))
  out, x = modal, modal
  for _ in range(hp.n_layers):
    x = adj @ x
    out = out + x
  out = out + 0.1 * _nrm(modal)
  keep = np.asarray(batch.mask) > 0
  u, pos, neg = (np.asarray(x)[keep] for x in
                 (batch.users, batch.pos_items, batch.neg_items))
  ue, pe, ne = out[:n_u][u], out[n_u:][pos], out[n_u:][neg]
  diff = (ue * pe).sum(-1) - (ue * ne).sum(-1)
  bpr = -np.mean(np.log(1 / (1 + np.exp(-diff)) + 1e-10))
  reg = hp.reg_weight * 0.5 * ((ue ** 2).sum() + (pe ** 2).sum()
                               + (ne ** 2).sum()) / len(u)
  return {'bpr': bpr, 'reg': reg}, out


@pytest.mark.parametrize('n_layers', [1, 3])
def test_forward_loss_and_gradient(tiny_dataset, n_layers):
  b = conftest.build_baseline('diffmm_mrlib', tiny_dataset,
                              n_layers=n_layers, reg_weight=0.1)
  dataset, hp, model, data = b.dataset, b.hp, b.model, b.data
  rng = np.random.default_rng(0)
  rows = rng.choice(dataset.n_train, 24, replace=False)
  mask = np.ones(24, np.float32)
  mask[-4:] = 0.0
  batch = data_lib.Batches(
      jnp.asarray(dataset.arrays['train_user'][rows]),
      jnp.asarray(dataset.arrays['train_item'][rows]),
      jnp.asarray(rng.integers(0, dataset.n_items, 24)), jnp.asarray(mask))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  f = lambda p: diffmm_mrlib.loss(nnx.merge(graphdef, p, rest), data, batch,
                                  None, hp)
  (total, (parts, (users, items))), grads = jax.value_and_grad(
      f, has_aux=True)(params)
  p = {k: _np(getattr(model, k)[...]) for k in
       ('user_emb', 'item_emb', 'modal_weight', 'trans_v_w', 'trans_v_b',
        'trans_t_w', 'trans_t_b')}
  adj = _np_adj(dataset)
  want, out = _np_loss(p, dataset, adj, batch, hp)
  np.testing.assert_allclose(_np(users), out[:dataset.n_users], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(_np(items), out[dataset.n_users:], rtol=1e-4,
                             atol=1e-5)
  for name in want:
    np.testing.assert_allclose(float(parts[name]), want[name], rtol=1e-4)
  g = nnx.merge(graphdef, grads, rest)
  total_np = lambda q: sum(_np_loss(q, dataset, adj, batch, hp)[0].values())
  for name, value in p.items():
    d = rng.normal(size=value.shape)
    eps = 1e-5
    numeric = (total_np({**p, name: value + eps * d})
               - total_np({**p, name: value - eps * d})) / (2 * eps)
    analytic = float(np.sum(_np(getattr(g, name)[...]) * d))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-6,
                               err_msg=name)

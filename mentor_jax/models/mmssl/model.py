"""MMSSL's model: the settings, parameters, graphs, forward pass and D.

MMSSL (Wei et al., WWW 2023) as the official HKUDS/MMSSL code trains it.

Read from MMSSL/{Models.py, main.py, utility/*} (commit f8d8955). Per batch
of `train_batch_size` users (drawn without replacement, one positive and one
negative each; n_train // B + 1 batches an epoch):

* Forward: f_m = Dropout(0.2)(Linear(F_m)) (no common_trans, raw features);
  one feature layer u_m = G_ui f_m, i_m = G_iu u_m with the one-sided graphs
  G_ui = D_u^-1/2 R, G_iu = D_i^-1/2 Rᵀ (`csr_norm(mean_flag=True)`); ID
  views idU_m = A_m E_i, idI_m = A_mᵀ' E_u on the modality graphs A_m; the
  attention block, which is exactly Z_m = idX_m W̄ with W̄ the sum of the
  `head_num` row blocks of w_self_attention_cat (softmax over the key
  modality, V broadcast along the query one; tests/test_mmssl.py checks the
  written form against this); u0 = E_u + 0.36 n(mean_m Z_m); two UI layers,
  the last softmaxed over the 64-d axis; layer mean + 0.55 n(u_v) + 0.55
  n(u_t) (n = F.normalize).
* Discriminator step (WGAN-GP, Adam 3e-4, betas .5/.9): fake = the image and
  text rows u_sim = n((u_m[b] i_mᵀ) ⊙ (1 - R[b])) of a no-grad forward;
  real = n(softmax(R[b] - 0.002 log(-log(U+1e-8)+1e-8)) + 100 u_sim_UI); D =
  Linear(I, I/4) -> LeakyReLU(True) -> BatchNorm -> Dropout(.31) ->
  Linear(I/4, I/8) -> LeakyReLU(True) -> BatchNorm -> Dropout(.5) ->
  Linear(I/8, 1) -> 100 sigmoid. `LeakyReLU(True)` passes True as the
  negative slope, so it is the identity; BatchNorm uses batch statistics
  (D is never put in eval mode). Penalty 0.3 mean((|∇D(x̂)| - 1)²) through a
  nested grad, weight gp_rate.
* Generator step (AdamW lr 5.5e-4, decay 0.01; the LambdaLR is never
  stepped): BPR (log-sigmoid mean) + 1e-5 ½(|u|²+|p|²+|n|²)/B + 1e-5
  ½(|i_v|²+|i_t|²+|u_v|²+|u_t|²)/I + 0.03 (GRACE(idU_v[b], u[b]) +
  GRACE(idU_t[b], u[b]); τ 0.5, one direction, +1e-8 inside the log) -
  G_rate mean D(fake) (gradient through the updated D).
* Modality graphs (T = 1): batch 0 of an epoch collects, per batch user, the
  top-k items of its (detached) image and text rows, k = ⌊I·m_topk_rate⌋;
  every later batch rebuilds A_m from what was collected and empties the
  collection. So A_m starts as G_ui, is the batch-0 top-k graph during
  batch 2 of each epoch, and is EMPTY otherwise (from batch 3 on, and at
  evaluation when an epoch has >= 3 batches). With the default rate k = 0
  on Baby (7050 items) and TikTok: the top-k graphs are empty too (a
  warning says so at creation).
* Evaluation (`test`): a forward in eval mode (no dropout) with the current
  A_m, full ranking of u·i (eval_embeddings='recompute').

Kept as state (nnx.Param leaves that no optimizer touches, float32 ids, so
checkpoints, stacks and resume carry them): the graph in use (`aug_*`) and
the collection (`pending_*`). Not ported (no effect on any output): w_q,
w_k, w_v, w_self_attention_{item,user}, common_trans, batch_norm, the
trainable copies of the features, the dead helpers (weighted_sum,
sample_topk, reward/fake-gene/ssl losses). w_q's gradient is zero in exact
arithmetic (torch's AdamW still moves it by rounding noise; it affects no
output). The official NDCG (IDCG over the retrieved list) and val/test
split files are replaced by this project's protocol. D's BatchNorm running
statistics are never used and not kept.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse

normalize = losses.l2_normalize  # F.normalize(x, dim=-1), eps 1e-12


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  """MMSSL/utility/parser.py's defaults (MMSSL issue #10 for Baby agrees)."""
  reg_weight: float = 1e-5        # regs[0], the BPR embedding decay
  feat_reg_decay: float = 1e-5
  cl_rate: float = 0.03
  tau: float = 0.5
  g_rate: float = 1e-4            # G_rate: weight of -mean D(fake)
  gp_rate: float = 1.0
  d_lr: float = 3e-4
  weight_decay: float = 0.01      # torch AdamW's default
  drop_rate: float = 0.2
  g_drop1: float = 0.31
  g_drop2: float = 0.5
  model_cat_rate: float = 0.55
  id_cat_rate: float = 0.36
  head_num: int = 4
  n_ui_layers: int = 2            # len(weight_size) = len([64, 64])
  real_data_tau: float = 0.005
  log_log_scale: float = 1e-5
  ui_pre_scale: float = 100.0
  m_topk_rate: float = 1e-4
  spmm_kernel: str = 'csr'


_GP_LAMBDA = 0.3  # main.py gradient_penalty's LAMBDA
_BN_EPS = 1e-5


def topk_of(n_items: int, hp: Hparams) -> int:
  """k = int(n_items * m_topk_rate), as main.py computes it."""
  return int(n_items * hp.m_topk_rate)


class MMSSL(nnx.Module):
  """The generator, the discriminator (`disc_*`) and the graph state."""

  def __init__(self, n_users, n_items, feat_v, feat_t, dim, head_num,
               batch_size, k, *, rngs: nnx.Rngs):
    key = lambda: rngs.params()
    xavier = init_lib.xavier_uniform
    for name, feat in (('image', feat_v), ('text', feat_t)):
      setattr(self, f'{name}_w', nnx.Param(xavier(key(), (feat.shape[1],
                                                          dim))))
      setattr(self, f'{name}_b', nnx.Param(init_lib.torch_linear_uniform(
          feat.shape[1])(key(), (dim,))))
    self.user_emb = nnx.Param(xavier(key(), (n_users, dim)))
    self.item_emb = nnx.Param(xavier(key(), (n_items, dim)))
    self.attn_cat = nnx.Param(xavier(key(), (head_num * dim, dim)))
    sizes = (n_items, int(n_items / 4), int(n_items / 8), 1)
    for j in range(3):  # weights_init: kaiming_normal_ (gain √2), bias 0
      std = math.sqrt(2.0 / sizes[j])
      setattr(self, f'disc_w{j}', nnx.Param(
          std * jax.random.normal(key(), sizes[j:j + 2])))
      setattr(self, f'disc_b{j}', nnx.Param(jnp.zeros(sizes[j + 1])))
    for j in range(2):
      setattr(self, f'disc_bn_scale{j}', nnx.Param(jnp.ones(sizes[j + 1])))
      setattr(self, f'disc_bn_bias{j}', nnx.Param(jnp.zeros(sizes[j + 1])))
    # The modality graphs: `aug_full` 1 while A_m is still G_ui; otherwise
    # A_m is the top-k graph of (aug_users, aug_items[m]) if aug_valid,
    # else empty. `pending_*`: batch 0's collection.
    zeros = lambda *s: nnx.Param(jnp.zeros(s, jnp.float32))
    self.aug_full = nnx.Param(jnp.ones((), jnp.float32))
    self.aug_valid, self.pending_valid = zeros(), zeros()
    self.aug_users, self.pending_users = zeros(batch_size), zeros(batch_size)
    # At least one column: orbax cannot save an empty array (k = 0 reads
    # none of it, `forward` keeps the first k).
    self.aug_items = zeros(2, batch_size, max(k, 1))
    self.pending_items = zeros(2, batch_size, max(k, 1))


def _group(params: Any, prefixes: tuple[str, ...]) -> Any:
  """Mask: True on the leaves whose name starts with one of `prefixes`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: str(path[0].key).startswith(prefixes), params)


def is_disc(params):
  return _group(params, ('disc_',))


def is_state(params):
  return _group(params, ('aug_', 'pending_'))


def is_gen(params):
  return jax.tree.map(lambda d, s: not (d or s), is_disc(params),
                      is_state(params))


# --- graphs and the forward pass ---------------------------------------------


def ui_graphs(data: data_lib.DeviceData) -> dict[str, sparse.Csr]:
  """G_ui = D_u^-1/2 R, G_iu = D_i^-1/2 Rᵀ and their transposes."""
  n_items = data.feat_v.shape[0]
  r, r_t = graph.interaction_matrix(data.train_indptr, data.train_items,
                                    n_items)
  du = (jnp.diff(r.indptr).astype(jnp.float32) + 1e-8) ** -0.5
  di = (jnp.diff(r_t.indptr).astype(jnp.float32) + 1e-8) ** -0.5
  return {'ui': r.with_values(du[r.rows]), 'ui_t': r_t.with_values(
      du[r_t.indices]), 'iu': r_t.with_values(di[r_t.rows]),
          'iu_t': r.with_values(di[r.indices])}


def topk_graph_products(users, items, emb_u, emb_i):
  """(A E_i, Aᵀ' E_u) for A = the 0/1 graph of edges (users[b], items[b,j])
  normalized as csr_norm(mean_flag=True) normalizes each side (duplicates
  add up, as scipy's csr_matrix sums them)."""
  n_users, n_items = emb_u.shape[0], emb_i.shape[0]
  k = items.shape[1]
  rows = jnp.repeat(users, k)
  cols = items.reshape(-1)
  ones = jnp.ones(rows.shape, jnp.float32)
  du = (jax.ops.segment_sum(ones, rows, n_users) + 1e-8) ** -0.5
  di = (jax.ops.segment_sum(ones, cols, n_items) + 1e-8) ** -0.5
  u_out = jax.ops.segment_sum(du[rows][:, None] * emb_i[cols], rows, n_users)
  i_out = jax.ops.segment_sum(di[cols][:, None] * emb_u[rows], cols, n_items)
  return u_out, i_out


def attention_weight(attn_cat: jax.Array, head_num: int) -> jax.Array:
  """W̄: the attention block's output is v W̄ (module docstring)."""
  dim = attn_cat.shape[1]
  return attn_cat.reshape(head_num, dim, dim).sum(0)


def dropout(key, x, rate):
  """torch's nn.Dropout in train mode; `key` None is eval mode."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def forward(model: MMSSL, data: data_lib.DeviceData, hp: Hparams,
            key: jax.Array | None = None) -> dict[str, jax.Array]:
  """Models.py MMSSL.forward; `key` draws the feature dropout (None: eval)."""
  g = ui_graphs(data)
  spmm = lambda a, a_t, x: sparse.spmm(a, x, kernel=hp.spmm_kernel,
                                       a_t=a_t)
  ui = lambda x: spmm(g['ui'], g['ui_t'], x)
  iu = lambda x: spmm(g['iu'], g['iu_t'], x)
  keys = (None, None) if key is None else jax.random.split(key)
  emb_u, emb_i = model.user_emb[...], model.item_emb[...]
  out = {}
  for m, (name, feat) in enumerate((('image', data.feat_v),
                                    ('text', data.feat_t))):
    f = dropout(keys[m], feat @ getattr(model, f'{name}_w')[...]
                + getattr(model, f'{name}_b')[...], hp.drop_rate)
    out[f'{name}_users'] = ui(f)
    out[f'{name}_items'] = iu(out[f'{name}_users'])
  # The modality ID views on A_m (module docstring).
  full_u, full_i = ui(emb_i), iu(emb_u)
  users = jax.lax.stop_gradient(model.aug_users[...]).astype(jnp.int32)
  k = topk_of(data.feat_v.shape[0], hp)
  items = jax.lax.stop_gradient(model.aug_items[...][..., :k]).astype(
      jnp.int32)
  is_full = jax.lax.stop_gradient(model.aug_full[...])
  valid = jax.lax.stop_gradient(model.aug_valid[...])
  w_bar = attention_weight(model.attn_cat[...], hp.head_num)
  z_u, z_i = [], []
  for m, name in enumerate(('image', 'text')):
    top_u, top_i = topk_graph_products(users, items[m], emb_u, emb_i)
    id_u = is_full * full_u + (1.0 - is_full) * valid * top_u
    id_i = is_full * full_i + (1.0 - is_full) * valid * top_i
    out[f'{name}_user_id'], out[f'{name}_item_id'] = id_u, id_i
    z_u.append(id_u @ w_bar)
    z_i.append(id_i @ w_bar)
  u = emb_u + hp.id_cat_rate * normalize((z_u[0] + z_u[1]) / 2)
  i = emb_i + hp.id_cat_rate * normalize((z_i[0] + z_i[1]) / 2)
  u_layers, i_layers = [u], [i]
  for layer in range(hp.n_ui_layers):
    u = ui(i)
    if layer == hp.n_ui_layers - 1:
      u = jax.nn.softmax(u, axis=-1)
    i = iu(u)
    if layer == hp.n_ui_layers - 1:
      i = jax.nn.softmax(i, axis=-1)
    u_layers.append(u)
    i_layers.append(i)
  c = hp.model_cat_rate
  out['users'] = (sum(u_layers) / len(u_layers)
                  + c * normalize(out['image_users'])
                  + c * normalize(out['text_users']))
  out['items'] = (sum(i_layers) / len(i_layers)
                  + c * normalize(out['image_items'])
                  + c * normalize(out['text_items']))
  return out


# --- the discriminator and its step ------------------------------------------


def batch_rows(data: data_lib.DeviceData, users: jax.Array,
               hp: Hparams) -> jax.Array:
  """R[users] dense [B, I] (duplicate interactions add up, as todense)."""
  n_items = data.feat_v.shape[0]
  start = data.train_indptr[users]
  deg = data.train_indptr[users + 1] - start
  offs = jnp.arange(max(hp.max_row_len, 1))
  pos = jnp.minimum(start[:, None] + offs, data.train_items.shape[0] - 1)
  hit = (offs < deg[:, None]).astype(jnp.float32)
  rows = jnp.broadcast_to(jnp.arange(users.shape[0])[:, None], pos.shape)
  return jnp.zeros((users.shape[0], n_items)).at[
      rows, data.train_items[pos]].add(hit)


def user_sim(u_rows: jax.Array, items: jax.Array, r_rows: jax.Array):
  """u_sim_calculation: n((u[b] iᵀ) ⊙ (1 - R[b]))."""
  return normalize((u_rows @ items.T) * (1.0 - r_rows))


def real_rows(r_rows, ui_sim, uniform, hp: Hparams):
  """The 'real' rows: softmax(R[b] - s log(-log(U+1e-8)+1e-8) / τ_real)
  (torch's precedence: only the noise is divided by τ), + 100 ui_sim,
  normalized."""
  noise = jnp.log(-jnp.log(uniform + 1e-8) + 1e-8)
  soft = jax.nn.softmax(r_rows - hp.log_log_scale * noise / hp.real_data_tau,
                        axis=1)
  return normalize(soft + ui_sim * hp.ui_pre_scale)


def _batch_norm(x, scale, bias):
  mean = jnp.mean(x, 0)
  var = jnp.mean((x - mean) ** 2, 0)  # biased, as torch normalizes
  return (x - mean) / jnp.sqrt(var + _BN_EPS) * scale + bias


def discriminate(p: dict[str, jax.Array], x: jax.Array,
                 key: jax.Array | None, hp: Hparams) -> jax.Array:
  """Discriminator.forward in train mode: [n, I] -> [n]. LeakyReLU(True)
  has slope 1 (the identity) and is left out."""
  keys = (None, None) if key is None else jax.random.split(key)
  h = x
  for j, rate in enumerate((hp.g_drop1, hp.g_drop2)):
    h = h @ p[f'disc_w{j}'] + p[f'disc_b{j}']
    h = _batch_norm(h, p[f'disc_bn_scale{j}'], p[f'disc_bn_bias{j}'])
    h = dropout(keys[j], h, rate)
  return 100.0 * jax.nn.sigmoid(h @ p['disc_w2'] + p['disc_b2']).reshape(-1)


def _safe_norm(g):
  sq = jnp.sum(g * g, axis=1)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def disc_loss(p, fake, real, alpha, keys, hp: Hparams):
  """loss_D = -mean D(real) + mean D(fake) + gp_rate * 0.3 mean((|∇D(x̂)|
  - 1)²), x̂ = α real + (1-α) fake, α per row; three D calls (3 dropout
  keys). Returns (loss, parts)."""
  lossf = jnp.mean(discriminate(p, fake, keys[0], hp))
  lossr = -jnp.mean(discriminate(p, real, keys[1], hp))
  mix = alpha * real + (1.0 - alpha) * fake
  grads = jax.grad(lambda x: jnp.sum(discriminate(p, x, keys[2], hp)))(mix)
  gp = jnp.mean((_safe_norm(grads) - 1.0) ** 2) * _GP_LAMBDA
  return lossr + lossf + hp.gp_rate * gp, {'disc_real': lossr,
                                           'disc_fake': lossf,
                                           'disc_gp': hp.gp_rate * gp}


def disc_params(model_or_params) -> dict[str, jax.Array]:
  return {n: getattr(model_or_params, n)[...] for n in
          ('disc_w0', 'disc_b0', 'disc_w1', 'disc_b1', 'disc_w2', 'disc_b2',
           'disc_bn_scale0', 'disc_bn_bias0', 'disc_bn_scale1',
           'disc_bn_bias1')}

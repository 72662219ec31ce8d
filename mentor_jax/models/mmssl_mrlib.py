"""MMSSL as MRLib's port runs it (src/models/mmssl.py): a plain graph model.

What MENTOR's author's library trains under the name MMSSL, beside the
published algorithm (`mmssl`, from the official HKUDS code). Read from
Jinfeng-Xu/Multimodal-Recommendation-Library @ df1768a (src/models/mmssl.py,
configs/model/MMSSL.yaml, common/trainer.py: MMRec's one-optimizer BPR loop,
Adam, weight decay 0, the identity LambdaLR). With n = F.normalize (eps
1e-12) and the one-sided graphs G_ui = D_u^-1/2 R, G_iu = D_i^-1/2 Rᵀ
(`csr_norm(mean_flag=True)`; degrees + 1e-8, so an empty row stays 0):

* f_m = common_trans(trans_m(F_m)) on the raw features (no dropout);
  u_m = G_ui f_m, i_m = G_iu u_m. The `mmlayer` loop recomputes the same
  values each time, so one pass is the same.
* The "image" and "text" ID graphs are G_ui / G_iu themselves, so both
  modality ID views are idU = G_ui E_i and idI = G_iu E_u.
* The attention block softmaxes over the key modality but broadcasts V
  along the query one: its output is exactly idX W̄, W̄ = the sum of the
  4 row blocks of w_self_attention_cat (tests check the written form).
  Z = 0.55 n(idX W̄), averaged over the two (equal) modalities.
* u_0 = E_u + 0.36 n(Z_u), i_0 = E_i + 0.36 n(Z_i); for l = 1..mmlayer:
  u_l = G_ui i_{l-1}, then i_l = G_iu u_l (sequential: the items use the
  new users); at the last layer both are softmaxed over the 64-d axis.
* u = mean_l u_l + 0.55 n(u_v) + 0.55 n(u_t); i likewise with i_v, i_t.
* loss = -mean ln(σ(s⁺ - s⁻) + 1e-10) + reg_weight ½(|u_b|² + |p_b|² +
  |n_b|²)/B on the final rows + ssl_alpha GRACE(i_v, i_t; ssl_temp) over
  ALL items + 1e-5 ½(|i_v|² + |i_t|²)/I.
* GRACE (one direction, i_v the anchors, c = cosine):
  -mean_i log(e^{c(a_i,b_i)/τ} / (Σ_j e^{c(a_i,a_j)/τ} + Σ_j e^{c(a_i,b_j)/τ}
  - e^{c(a_i,a_i)/τ}) + 1e-8). MRLib tiles it in 1024-row blocks but still
  holds a block's full rows; `grace_all_items` does the same exactly, with
  the tiles recomputed in the backward pass (never I x I).
* Scores: a fresh forward with the current parameters.

Not built, because MRLib builds them and never trains or reads them: the
Discriminator D (I -> I/4 -> I/8 -> 1; 14M parameters on Baby), `G_rate`
(in the yaml grid, read into self.G_rate, used nowhere), the dense U x I
copies of R, `batch_norm`, `dropout`, w_v and w_self_attention_{item,user}
(never in the graph: no gradient, torch's Adam skips them). w_q and w_k
are in the graph but their gradient is zero in exact arithmetic (the
softmax rows sum to 1 against a V that does not depend on the key), so
only rounding noise moves them in torch, and they affect no output. The
paper's adversarial generator, modality graph augmentation and user-level
contrastive loss are absent from MRLib's code, hence from this port.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse

# MRLib's constants (attributes in __init__, not config keys).
MODEL_CAT_RATE = 0.55
ID_CAT_RATE = 0.36
FEAT_REG_DECAY = 1e-5
HEAD_NUM = 4
GRACE_LOG_EPS = 1e-8  # inside the log, after the ratio

normalize = losses.l2_normalize  # F.normalize(x, dim=-1), eps 1e-12


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  """The first cell of MRLib's MMSSL.yaml grid (G_rate, a no-op, left out)."""
  reg_weight: float = 1e-5
  ssl_alpha: float = 0.1    # cl_rate: the GRACE weight
  ssl_temp: float = 0.2     # tau
  mmlayer: int = 2          # UI layers (and the idempotent feature loop)
  grace_block_size: int = 1024  # anchor rows per GRACE tile (MRLib's 1024)
  spmm_kernel: str = 'csr'


class MMSSLMRLib(nnx.Module):
  """The parameters that reach MRLib's output (module docstring)."""

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int,
               dim: int, *, rngs: nnx.Rngs):
    key = rngs.params
    # nn.Linear, then xavier_uniform_ on the weight; the bias keeps
    # nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    for name, fan_in in (('image', dim_v), ('text', dim_t), ('common', dim)):
      setattr(self, f'{name}_w', nnx.Param(
          init_lib.xavier_uniform(key(), (fan_in, dim))))
      setattr(self, f'{name}_b', nnx.Param(
          init_lib.torch_linear_uniform(fan_in)(key(), (dim,))))
    self.user_emb = nnx.Param(init_lib.xavier_uniform(key(), (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(key(), (n_items, dim)))
    self.attn_cat = nnx.Param(init_lib.xavier_uniform(
        key(), (HEAD_NUM * dim, dim)))


def one_sided_graphs(data: data_lib.DeviceData) -> dict[str, sparse.Csr]:
  """G_ui = D_u^-1/2 R, G_iu = D_i^-1/2 Rᵀ, and the transposes the 'csr'
  kernel's backward pass needs."""
  n_items = data.feat_v.shape[0]
  r, r_t = graph.interaction_matrix(data.train_indptr, data.train_items,
                                    n_items)
  du = (jnp.diff(r.indptr).astype(jnp.float32) + 1e-8) ** -0.5
  di = (jnp.diff(r_t.indptr).astype(jnp.float32) + 1e-8) ** -0.5
  return {'ui': r.with_values(du[r.rows]),
          'ui_t': r_t.with_values(du[r_t.indices]),
          'iu': r_t.with_values(di[r_t.rows]),
          'iu_t': r.with_values(di[r.indices])}


def attention_weight(attn_cat: jax.Array, head_num: int = HEAD_NUM
                     ) -> jax.Array:
  """W̄ = Σ_h w_self_attention_cat[h d:(h+1) d]: the attention block's
  output is v W̄, whatever w_q and w_k hold (module docstring)."""
  dim = attn_cat.shape[1]
  return attn_cat.reshape(head_num, dim, dim).sum(0)


def forward(model: MMSSLMRLib, data: data_lib.DeviceData,
            hp: Hparams) -> dict[str, jax.Array]:
  """MRLib's `forward()`: final user / item rows and the modality views."""
  g = one_sided_graphs(data)
  ui = lambda x: sparse.spmm(g['ui'], x, kernel=hp.spmm_kernel,
                             a_t=g['ui_t'])
  iu = lambda x: sparse.spmm(g['iu'], x, kernel=hp.spmm_kernel,
                             a_t=g['iu_t'])
  p = lambda name: getattr(model, name)[...]
  out = {}
  for name, feat in (('image', data.feat_v), ('text', data.feat_t)):
    f = feat @ p(f'{name}_w') + p(f'{name}_b')
    f = f @ p('common_w') + p('common_b')  # common_trans, shared
    out[f'{name}_users'] = ui(f)
    out[f'{name}_items'] = iu(out[f'{name}_users'])
  emb_u, emb_i = p('user_emb'), p('item_emb')
  w_bar = attention_weight(p('attn_cat'))
  # Both modalities' ID views are the same product, so the mean over
  # modalities of their attention outputs is that one output.
  z_u = MODEL_CAT_RATE * normalize(ui(emb_i) @ w_bar)
  z_i = MODEL_CAT_RATE * normalize(iu(emb_u) @ w_bar)
  u = emb_u + ID_CAT_RATE * normalize(z_u)
  i = emb_i + ID_CAT_RATE * normalize(z_i)
  u_layers, i_layers = [u], [i]
  for layer in range(hp.mmlayer):
    u = ui(i)
    if layer == hp.mmlayer - 1:
      u = jax.nn.softmax(u, axis=-1)
    i = iu(u)  # the new users
    if layer == hp.mmlayer - 1:
      i = jax.nn.softmax(i, axis=-1)
    u_layers.append(u)
    i_layers.append(i)
  c = MODEL_CAT_RATE
  out['users'] = (sum(u_layers) / len(u_layers)
                  + c * normalize(out['image_users'])
                  + c * normalize(out['text_users']))
  out['items'] = (sum(i_layers) / len(i_layers)
                  + c * normalize(out['image_items'])
                  + c * normalize(out['text_items']))
  return out


def _dot_t(x: jax.Array, y: jax.Array) -> jax.Array:
  """x yᵀ in the inputs' dtype at full precision (no TF32 on a GPU)."""
  return jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)


def grace_all_items(z1: jax.Array, z2: jax.Array, tau: float | jax.Array,
                    block_size: int = 1024) -> jax.Array:
  """MRLib's `batched_contrastive_loss(z1, z2)`, exact, never n x n.

  L = -mean_i log(e^{<a_i,b_i>/τ} / (Σ_j e^{<a_i,a_j>/τ} + Σ_j e^{<a_i,b_j>/τ}
  - e^{<a_i,a_i>/τ}) + 1e-8), a = n(z1), b = n(z2).

  The anchors are taken `block_size` rows at a time (padded with zero rows
  that are then dropped); each [block, n] tile lives only inside one
  iteration of `lax.map`, and `jax.checkpoint` makes the backward pass
  recompute it instead of storing it, so the extra memory is O(block * n).
  No max-shift: like MRLib, exp(c/τ) <= e^{1/τ}, finite in float32 for
  τ >= 0.012. The diagonals are row-wise dots (O(n d)); a zero row (an
  item nobody trained on) has c(a_i, a_i) = 0, not 1, as in MRLib.
  """
  a, b = normalize(z1), normalize(z2)
  n, d = a.shape
  block = max(1, min(int(block_size), n))
  n_blocks = -(-n // block)
  a_blocks = jnp.pad(a, ((0, n_blocks * block - n), (0, 0))).reshape(
      n_blocks, block, d)

  @jax.checkpoint
  def row_sums(a_blk):
    return (jnp.sum(jnp.exp(_dot_t(a_blk, a) / tau), axis=-1)
            + jnp.sum(jnp.exp(_dot_t(a_blk, b) / tau), axis=-1))

  sums = jax.lax.map(row_sums, a_blocks).reshape(-1)[:n]
  refl_diag = jnp.exp(jnp.sum(a * a, axis=-1) / tau)
  positive = jnp.exp(jnp.sum(a * b, axis=-1) / tau)
  return jnp.mean(-jnp.log(positive / (sums - refl_diag) + GRACE_LOG_EPS))


def loss(model: MMSSLMRLib, data: data_lib.DeviceData,
         batch: data_lib.Batches, key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  """MRLib's `calculate_loss` (padded batch rows masked out)."""
  del key, aux
  out = forward(model, data, hp)
  users, items = out['users'], out['items']
  u, p, n = (users[batch.users], items[batch.pos_items],
             items[batch.neg_items])
  mask = batch.mask
  sq = sum(jnp.sum(mask * jnp.sum(x * x, -1)) for x in (u, p, n))
  i_v, i_t = out['image_items'], out['text_items']
  parts = {
      'bpr': losses.mmrec_bpr_loss(jnp.sum(u * p, -1), jnp.sum(u * n, -1),
                                   mask),
      'reg': hp.reg_weight * 0.5 * sq / jnp.maximum(jnp.sum(mask), 1.0),
      'cl': hp.ssl_alpha * grace_all_items(i_v, i_t, hp.ssl_temp,
                                           hp.grace_block_size),
      'feat_reg': FEAT_REG_DECAY * 0.5 * (jnp.sum(i_v * i_v)
                                          + jnp.sum(i_t * i_t))
                  / i_v.shape[0],
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: MMSSLMRLib, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """`full_sort_predict`: a fresh forward."""
  out = forward(model, data, hp)
  return out['users'], out['items']


def create_model(config: Any, dataset: data_lib.Dataset) -> MMSSLMRLib:
  return MMSSLMRLib(dataset.n_users, dataset.n_items, dataset.dim_v,
                    dataset.dim_t, config.embedding_size,
                    rngs=nnx.Rngs(params=config.seed))


MMSSL_MRLIB_FAMILY = family.ModelFamily(
    name='mmssl_mrlib', display_name='MMSSL (MRLib)', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight', 'ssl_alpha', 'ssl_temp'}),
    table_params=('user_emb', 'item_emb'),
    report_keys=('ssl_alpha', 'ssl_temp', 'mmlayer'),
    # MRLib's MMSSL.yaml grid in its order (reg_weight, ssl_alpha,
    # ssl_temp, G_rate (a no-op, left out), mmlayer); MRLib's trainer:
    # lr 1e-3, batch 2048 (the trainer's defaults).
    defaults={'embedding_size': 64,
              'grid': {'reg_weight': (1e-5, 1e-4, 1e-3),
                       'ssl_alpha': (0.1, 0.01, 0.001),
                       'ssl_temp': (0.2, 0.4, 0.6),
                       'mmlayer': (2, 3)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE, ssl_alpha=spec.NON_NEGATIVE,
        ssl_temp=spec.POSITIVE, mmlayer=spec.integer(1),
        grace_block_size=spec.integer(1)))

"""LGMRec (Guo et al., AAAI 2024) as in MMRec's src/models/lgmrec.py.

With R the U x I training interactions, Â the stored normalized user-item
graph, F_m the frozen raw features of modality m (v, t) and tau = 0.2:

* Collaborative (CGE): LightGCN's layer mean of the ID tables over
  n_ui_layers on Â (`cf_model='mf'`: the ID tables themselves).
* Modality (MGE): items x_m = F_m W_m (no bias), users the mean of their
  items' x_m (R x_m over distinct-item degrees), then Â^{n_mm_layers}
  (a power, no layer mean). Local: CGE + l2n(MGE_v) + l2n(MGE_t).
* Hypergraph (GHE): item-hyperedge logits F_m H_m [I, n_hyper], user logits
  R F_m H_m; each soft-assigned by a Gumbel softmax at temperature tau, then
  dropout (keep_rate, training only) on the four assignment matrices.
  n_hyper_layer rounds of lat = A_iᵀ e_I, e_I = A_i lat, e_U = A_u lat from
  the CGE item rows. Final: local + alpha * l2n(GHE_v + GHE_t).
* Loss: ln-BPR + cl_weight * (InfoNCE over the batch's users, v-view
  against every user's t-view, + the same for the batch's positive items),
  *summed* over the batch + reg_weight * EmbLoss(user, pos, neg) of the
  final rows.
* Scoring: MMRec's full_sort_predict runs the same forward, Gumbel noise
  included (F.gumbel_softmax draws in eval mode too; only the dropout is
  off). Here it draws that noise from one fixed key so that scores are a
  function of the parameters; `score_gumbel=False` uses the noiseless
  softmax(logits / tau) instead (not MMRec).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import errors
from mentor_jax import family
from mentor_jax.ops import graph
from mentor_jax.ops import infonce
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse

# MMRec's self.tau: the Gumbel softmax's and the InfoNCE's temperature.
TAU = 0.2
# MMRec adds this to the user degrees before inverting them.
_DEGREE_EPS = 1e-7
# Anchor rows per logits tile of the hypergraph InfoNCE.
_NCE_BLOCK = 1024
# The fixed key of the scoring pass's Gumbel noise.
_SCORE_KEY = 0
CF_MODELS = ('lightgcn', 'mf')


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  cf_model: str = 'lightgcn'
  n_ui_layers: int = 2
  n_mm_layers: int = 2
  n_hyper_layer: int = 1
  hyper_num: int = 4
  keep_rate: float = 0.5
  alpha: float = 0.3
  cl_weight: float = 1e-4
  reg_weight: float = 1e-6
  score_gumbel: bool = True
  spmm_kernel: str = 'csr'


class LGMRec(nnx.Module):
  """ID tables; per modality the feature map W_m and hyperedge map H_m."""

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int,
               dim: int, feat_dim: int, hyper_num: int, *, rngs: nnx.Rngs):
    xu = lambda shape: nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                          shape))
    self.user_emb = xu((n_users, dim))
    self.item_emb = xu((n_items, dim))
    self.proj_v = xu((dim_v, feat_dim))
    self.hyper_v = xu((dim_v, hyper_num))
    self.proj_t = xu((dim_t, feat_dim))
    self.hyper_t = xu((dim_t, hyper_num))


class HyperNoise(NamedTuple):
  """The randomness of one forward pass, per assignment matrix
  (item-v, user-v, item-t, user-t): Gumbel noise and dropout multipliers
  (0 or 1/keep_rate; all ones when dropout is off)."""

  gumbel: tuple[jax.Array, jax.Array, jax.Array, jax.Array]
  keep: tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def draw_noise(key: jax.Array, n_users: int, n_items: int, hyper_num: int,
               keep_rate: float | None) -> HyperNoise:
  """Gumbel(0, 1) noise and, if keep_rate is not None, dropout multipliers.

  Returns:
    HyperNoise with [I, H], [U, H], [I, H], [U, H] arrays.
  """
  shapes = [(n_items, hyper_num), (n_users, hyper_num)] * 2
  keys = jax.random.split(key, 8)
  gumbel = tuple(jax.random.gumbel(k, s) for k, s in zip(keys[:4], shapes))
  if keep_rate is None:
    keep = tuple(jnp.ones(s) for s in shapes)
  else:
    keep = tuple(jax.random.bernoulli(k, keep_rate, s) / keep_rate
                 for k, s in zip(keys[4:], shapes))
  return HyperNoise(gumbel, keep)


def noiseless(n_users: int, n_items: int, hyper_num: int) -> HyperNoise:
  """Zero Gumbel noise, no dropout: softmax(logits / tau)."""
  shapes = [(n_items, hyper_num), (n_users, hyper_num)] * 2
  return HyperNoise(tuple(jnp.zeros(s) for s in shapes),
                    tuple(jnp.ones(s) for s in shapes))


def hypergraph_pass(i_hyper: jax.Array, u_hyper: jax.Array,
                    item_emb: jax.Array, n_layers: int
                    ) -> tuple[jax.Array, jax.Array]:
  """MMRec's HGNNLayer: (user rows, item rows) after n_layers rounds."""
  if n_layers < 1:
    raise ValueError(f'n_hyper_layer must be >= 1, got {n_layers}')
  i_ret = item_emb
  for _ in range(n_layers):
    lat = i_hyper.T @ i_ret  # [H, d]: what each hyperedge gathers.
    i_ret = i_hyper @ lat
    u_ret = u_hyper @ lat
  return u_ret, i_ret


class Forward(NamedTuple):
  users: jax.Array  # [U, d] final
  items: jax.Array  # [I, d] final
  hyper: tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # uv, iv, ut, it


def forward(model: LGMRec, data: data_lib.DeviceData, hp: Hparams,
            noise: HyperNoise) -> Forward:
  """The whole forward pass with the given randomness."""
  n_users = data.train_indptr.shape[0] - 1
  n_items = data.feat_v.shape[0]
  r, r_t = graph.interaction_matrix(data.train_indptr, data.train_items,
                                    n_items)
  inv_degree = 1.0 / (graph.distinct_row_counts(
      data.train_indptr, data.train_items) + _DEGREE_EPS)
  ui = lambda x: sparse.spmm(r, x, kernel=hp.spmm_kernel, a_t=r_t)

  users, items = model.user_emb[...], model.item_emb[...]
  ego = jnp.concatenate([users, items], axis=0)
  n_cf_layers = hp.n_ui_layers if hp.cf_model == 'lightgcn' else 0
  cge = graph.layer_mean_propagate(data.adj, ego, n_cf_layers,
                                   hp.spmm_kernel)

  def modality(feat, proj, hyper, g_item, g_user, keep_item, keep_user):
    item_x = feat @ proj
    x = jnp.concatenate([ui(item_x) * inv_degree[:, None], item_x], axis=0)
    for _ in range(hp.n_mm_layers):
      x = sparse.spmm(data.adj, x, kernel=hp.spmm_kernel)
    item_logits = feat @ hyper
    user_logits = ui(item_logits)
    i_hyper = jax.nn.softmax((item_logits + g_item) / TAU, axis=1)
    u_hyper = jax.nn.softmax((user_logits + g_user) / TAU, axis=1)
    u_h, i_h = hypergraph_pass(i_hyper * keep_item, u_hyper * keep_user,
                               cge[n_users:], hp.n_hyper_layer)
    return x, u_h, i_h

  g, k = noise.gumbel, noise.keep
  mge_v, uv, iv = modality(data.feat_v, model.proj_v[...],
                           model.hyper_v[...], g[0], g[1], k[0], k[1])
  mge_t, ut, it = modality(data.feat_t, model.proj_t[...],
                           model.hyper_t[...], g[2], g[3], k[2], k[3])
  local = cge + losses.l2_normalize(mge_v) + losses.l2_normalize(mge_t)
  ghe = jnp.concatenate([uv + ut, iv + it], axis=0)
  out = local + hp.alpha * losses.l2_normalize(ghe)
  return Forward(out[:n_users], out[n_users:], (uv, iv, ut, it))


def _sizes(model: LGMRec) -> tuple[int, int, int]:
  return (model.user_emb.shape[0], model.item_emb.shape[0],
          model.hyper_v.shape[1])


def loss(model: LGMRec, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del aux
  noise = draw_noise(key, *_sizes(model), hp.keep_rate)
  f = forward(model, data, hp, noise)
  u = f.users[batch.users]
  p, n = f.items[batch.pos_items], f.items[batch.neg_items]
  mask = batch.mask
  bpr = losses.bpr_loss(jnp.sum(u * p, -1), jnp.sum(u * n, -1), mask,
                        log_base=jnp.e)
  uv, iv, ut, it = f.hyper
  hcl = (infonce.info_nce_against_all(
      uv[batch.users], ut[batch.users], ut, TAU, mask=mask,
      block_size=_NCE_BLOCK)
         + infonce.info_nce_against_all(
             iv[batch.pos_items], it[batch.pos_items], it, TAU, mask=mask,
             block_size=_NCE_BLOCK))
  parts = {
      'bpr': bpr,
      'hcl': hp.cl_weight * hcl,
      'reg': hp.reg_weight * losses.mmrec_emb_loss((u, p, n), mask),
  }
  return sum(parts.values()), (parts, (f.users, f.items))


def score(model: LGMRec, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  n_users, n_items, hyper_num = _sizes(model)
  if hp.score_gumbel:
    noise = draw_noise(jax.random.PRNGKey(_SCORE_KEY), n_users, n_items,
                       hyper_num, None)
  else:
    noise = noiseless(n_users, n_items, hyper_num)
  f = forward(model, data, hp, noise)
  return f.users, f.items


def create_model(config: Any, dataset: data_lib.Dataset) -> LGMRec:
  a = dataset.arrays
  feat_dim = config.get('feat_embed_dim', config.embedding_size)
  if feat_dim != config.embedding_size:  # CGE and MGE rows are added.
    raise errors.ConfigError(
        f'config.feat_embed_dim={feat_dim}: LGMRec adds modality and ID '
        f'rows, so it must equal embedding_size={config.embedding_size}')
  return LGMRec(dataset.n_users, dataset.n_items, a['feat_v'].shape[1],
                a['feat_t'].shape[1], config.embedding_size, feat_dim,
                config.get('hyper_num', Hparams.hyper_num),
                rngs=nnx.Rngs(params=config.seed))


LGMREC_FAMILY = family.ModelFamily(
    name='lgmrec', display_name='LGMRec', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight', 'cl_weight', 'alpha', 'keep_rate'}),
    table_params=('user_emb', 'item_emb'),
    report_keys=('cl_weight', 'alpha', 'keep_rate', 'hyper_num'),
    # LGMRec.yaml has one value per key (no grid): the Hparams defaults.
    defaults={'embedding_size': 64, 'feat_embed_dim': 64},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        feat_embed_dim=spec.integer(1), cf_model=spec.choice(*CF_MODELS),
        n_ui_layers=spec.integer(0), n_mm_layers=spec.integer(0),
        n_hyper_layer=spec.integer(1), hyper_num=spec.integer(1),
        keep_rate=spec.number(0.0, 1.0, low_open=True),
        alpha=spec.number(), cl_weight=spec.NON_NEGATIVE,
        reg_weight=spec.NON_NEGATIVE))

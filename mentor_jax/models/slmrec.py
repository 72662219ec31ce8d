"""SLMRec (Tao et al., TMM 2022) as in MMRec's src/models/slmrec.py.

What MMRec's code computes (`ssl_task: FAC`, the only task that runs in
MMRec: FD and FM read `config["data.input.dataset"]`, which is None, and
then crash on the missing audio tower):

* Graph: Â = D^-1/2 A D^-1/2 of the binary bipartite A over the DISTINCT
  training (user, item) pairs (`inter_matrix(...).nonzero()`), degrees
  + 1e-8 (no self-loops). In float32 the + 1e-8 is a no-op for any degree
  >= 1, so Â's values are 1/sqrt(d_u) * 1/sqrt(d_i), both rounded to
  float32. The stored `adj` keeps a repeated training row as two entries
  and rounds the product once from float64: `slmrec_adj` re-derives Â on
  the device from its pattern (repeats get 0, degrees count distinct
  neighbours), which is MMRec's graph up to ~1 float32 ulp.
* Three LightGCN towers that all start from the SAME user table E_u:
  LGN(E_u, E_i), LGN(E_u, v_dense(F̂_v)), LGN(E_u, t_dense(F̂_t)), with
  LGN the mean over layers 0..n_layers of Â^l. Propagation is linear, so
  the towers are one propagation of the [N, 3d] block [E_u‖E_u‖E_u ;
  E_i‖V‖T] (exact). F̂ are the raw features row-L2-normalized, once at
  init upstream; here on every forward of the constant features (the same
  values, and no second copy of the feature tables).
* Fusion (`mm_fusion_mode: concat`): user = W_U [i_u‖v_u‖t_u] + b_U,
  item = W_I [i_i‖v_i‖t_i] + b_I.
* Loss = CE_batch(n(user[u]) n(item[p])ᵀ / temp) + ssl_alpha * FAC, the
  CE with labels on the diagonal over the batch's (user, positive) rows
  (in-batch softmax; a positive repeated in the batch is a false
  negative; the sampled negatives are unused). FAC over the batch's
  positives p (repeats kept), unnormalized:
    x1 = g_i_iv(i_i[p]), x2 = g_v_iv(v_i[p]):  CE_batch(x1 x2ᵀ / ssl_temp)
    x3 = g_iva_ivat(g_iv_iva(x1)), x4 = g_t_ivat(t_i[p]):  CE(x3 x4ᵀ / ...)
  The text chain goes through g_iv_iva, the official code's audio step.
* Optimizer: torch's Adam(weight_decay=1e-4): coupled L2 on every
  parameter (the yaml's `weight_decay`); there is no other regularizer.
* Scores: sigmoid(user · item) with the embeddings cached by the LAST
  training batch's forward (eval_embeddings='last_step').

Deliberate differences (docs/paper_vs_code.md):
* The yaml's `reg` (a grid of 4 values) is read nowhere in MMRec's code
  (nor in the official one): no key here, and the family's grid is the
  yaml's without that axis (80 distinct cells instead of 320).
* g_a_iva (the official audio head) is built upstream but never used: it
  gets no gradient, so torch's Adam never touches it. It is not created.
* Ranking uses the raw score user · item; the sigmoid is monotone, so the
  order is the same except that float32 sigmoid rounds nearby large scores
  to one value (exactly 1.0 above ~16.6), whose order MMRec leaves to
  torch.topk's tie handling. Here those are ordered by the raw score.
* The batch is padded to a fixed size; padded rows are masked out of the
  rows and the columns of every in-batch softmax, which equals MMRec's
  shorter last batch exactly.
The paper's SLMRec differs more (docs/paper_vs_code.md).
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

# MMRec adds this to the degrees before the inverse square root (adj 'pre').
DEGREE_EPS = 1e-8
N_TOWERS = 3  # ID, image, text.


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  """SLMRec.yaml's first grid cell and its fixed settings."""

  temp: float = 0.2  # main in-batch CE
  ssl_temp: float = 0.1  # FAC CEs
  ssl_alpha: float = 0.01  # FAC weight
  weight_decay: float = 1e-4  # torch Adam's coupled L2
  n_layers: int = 3  # `layer_num`
  spmm_kernel: str = 'csr'


def _linear(key: jax.Array, d_in: int, d_out: int
            ) -> tuple[nnx.Param, nnx.Param]:
  """nn.Linear after MMRec's `xavier_uniform_(weight)`: the bias keeps
  torch's default U(+-1/sqrt(d_in)). W is [d_in, d_out] (x @ W)."""
  kw, kb = jax.random.split(key)
  return (nnx.Param(init_lib.xavier_uniform(kw, (d_in, d_out))),
          nnx.Param(init_lib.torch_linear_uniform(d_in)(kb, (d_out,))))


class SLMRec(nnx.Module):
  """ID tables, the feature projections, the fusion layers, the FAC heads."""

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int,
               dim: int, *, rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_items, dim)))
    self.v_dense_w, self.v_dense_b = _linear(rngs.params(), dim_v, dim)
    self.t_dense_w, self.t_dense_b = _linear(rngs.params(), dim_t, dim)
    # embedding_{user,item}_after_GCN: [i‖v‖t] (3d) -> d.
    self.user_fusion_w, self.user_fusion_b = _linear(
        rngs.params(), N_TOWERS * dim, dim)
    self.item_fusion_w, self.item_fusion_b = _linear(
        rngs.params(), N_TOWERS * dim, dim)
    # FAC heads (g_a_iva, never used upstream, is left out).
    for name, d_out in (('g_i_iv', dim), ('g_v_iv', dim),
                        ('g_iv_iva', dim), ('g_iva_ivat', dim // 2),
                        ('g_t_ivat', dim // 2)):
      w, b = _linear(rngs.params(), dim, d_out)
      setattr(self, f'{name}_w', w)
      setattr(self, f'{name}_b', b)


def _dense(model: SLMRec, name: str, x: jax.Array) -> jax.Array:
  return x @ getattr(model, f'{name}_w')[...] + getattr(model,
                                                         f'{name}_b')[...]


def slmrec_adj(adj: sparse.Csr) -> sparse.Csr:
  """MMRec's 'pre' Â over the distinct pairs, on the stored pattern.

  The stored `adj` lists each training row as an entry (a repeated row is
  a repeated column in its row; columns ascending within rows). The first
  entry of each run of equal columns gets 1/sqrt(d_r + 1e-8) *
  1/sqrt(d_c + 1e-8) with d the distinct-neighbour counts, in float32 as
  MMRec computes it; the repeats get 0. Symmetric, like the stored graph,
  so the 'csr' kernel's backward may use it as its own transpose.
  """
  starts = jnp.arange(adj.nnz) == adj.indptr[adj.rows]
  first = starts | (adj.indices != jnp.roll(adj.indices, 1))
  in_a = first.astype(jnp.float32)  # A's 0/1 entries on the pattern.
  degree = jax.ops.segment_sum(in_a, adj.rows, num_segments=adj.n_rows)
  inv_sqrt = jax.lax.rsqrt(degree + jnp.float32(DEGREE_EPS))
  return adj.with_values(in_a * inv_sqrt[adj.rows] * inv_sqrt[adj.indices])


def propagate(model: SLMRec, data: data_lib.DeviceData,
              hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """The three towers' LGN outputs: ([U, 3d] i_u‖v_u‖t_u, [I, 3d] i_i‖v_i‖t_i).

  One propagation of [E_u‖E_u‖E_u ; E_i‖V‖T]: column block k of the
  output is tower k's LGN, as the three separate `compute_graph` calls.
  """
  v = _dense(model, 'v_dense', losses.l2_normalize(data.feat_v))
  t = _dense(model, 't_dense', losses.l2_normalize(data.feat_t))
  users = model.user_emb[...]
  ego = jnp.concatenate([
      jnp.tile(users, (1, N_TOWERS)),
      jnp.concatenate([model.item_emb[...], v, t], axis=1)], axis=0)
  out = graph.layer_mean_propagate(slmrec_adj(data.adj), ego, hp.n_layers,
                                   hp.spmm_kernel)
  n_users = users.shape[0]
  return out[:n_users], out[n_users:]


def fuse(model: SLMRec, user_towers: jax.Array,
         item_towers: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The scored embeddings: the concat fusion through a Linear each."""
  return (_dense(model, 'user_fusion', user_towers),
          _dense(model, 'item_fusion', item_towers))


def in_batch_cross_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """torch's CrossEntropyLoss(logits, arange(B)) over the real rows.

  Rows and columns with mask 0 (the padding of the last batch) are left
  out of the mean and of every softmax, which is the same loss as on the
  shorter batch MMRec's last step sees.

  Args:
    logits: [B, B], row b's positive at column b.
    mask: [B] 1 for real rows.

  Returns:
    Scalar: mean over real rows of logsumexp_real(logits[b]) - logits[b, b].
  """
  valid = mask > 0
  lse = jax.nn.logsumexp(jnp.where(valid[None, :], logits, -jnp.inf),
                         axis=-1)
  # The diagonal of the unmasked logits: finite on padded rows as well.
  per_row = jnp.where(valid, lse - jnp.diagonal(logits), 0.0)
  return jnp.sum(per_row) / jnp.maximum(jnp.sum(valid), 1)


def fac_loss(model: SLMRec, item_towers: jax.Array, ssl_temp: Any,
             mask: jax.Array) -> jax.Array:
  """MMRec's `fac(idx)` on the batch's rows of the item towers [B, 3d]."""
  i_i, v_i, t_i = jnp.split(item_towers, N_TOWERS, axis=1)
  x_i_iv = _dense(model, 'g_i_iv', i_i)
  x_v_iv = _dense(model, 'g_v_iv', v_i)
  image = in_batch_cross_entropy(x_i_iv @ x_v_iv.T / ssl_temp, mask)
  x_iva_ivat = _dense(model, 'g_iva_ivat',
                      _dense(model, 'g_iv_iva', x_i_iv))
  x_t_ivat = _dense(model, 'g_t_ivat', t_i)
  text = in_batch_cross_entropy(x_iva_ivat @ x_t_ivat.T / ssl_temp, mask)
  return image + text


def loss(model: SLMRec, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams, aux: Any = None) -> family.LossOutput:
  """In-batch InfoNCE on the fused embeddings + ssl_alpha * FAC."""
  del key, aux
  user_towers, item_towers = propagate(model, data, hp)
  users, items = fuse(model, user_towers, item_towers)
  u = losses.l2_normalize(users[batch.users])
  p = losses.l2_normalize(items[batch.pos_items])
  parts = {
      'infonce': in_batch_cross_entropy(u @ p.T / hp.temp, batch.mask),
      'fac': hp.ssl_alpha * fac_loss(model, item_towers[batch.pos_items],
                                     hp.ssl_temp, batch.mask),
  }
  # The unnormalized fused embeddings of this forward: what MMRec caches
  # in all_users / all_items and ranks (eval_embeddings='last_step').
  return sum(parts.values()), (parts, (users, items))


def score(model: SLMRec, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(users, items) from the current parameters (eval 'recompute')."""
  return fuse(model, *propagate(model, data, hp))


def make_optimizer(hp: Hparams):
  """torch's Adam(weight_decay=hp.weight_decay), as MMRec's trainer builds
  it from SLMRec.yaml."""
  return family.adam_with_l2(hp.weight_decay)(hp)


def create_model(config: Any, dataset: data_lib.Dataset) -> SLMRec:
  a = dataset.arrays
  return SLMRec(dataset.n_users, dataset.n_items, a['feat_v'].shape[1],
                a['feat_t'].shape[1], config.embedding_size,
                rngs=nnx.Rngs(params=config.seed))


SLMREC_FAMILY = family.ModelFamily(
    name='slmrec', display_name='SLMRec', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    make_optimizer=make_optimizer,
    sweepable=frozenset({'temp', 'ssl_temp', 'ssl_alpha', 'weight_decay'}),
    table_params=('user_emb', 'item_emb'),
    report_keys=('ssl_temp', 'ssl_alpha'),
    # SLMRec.yaml: recdim 64, its grid without the no-op `reg` axis; the
    # default cell is the grid's first (lr 1e-4, ssl_temp 0.1, ssl_alpha
    # 0.01). MMRec ranks the last training batch's embeddings.
    defaults={'embedding_size': 64, 'learning_rate': 1e-4,
              'eval_embeddings': 'last_step',
              'grid': {'learning_rate': (1e-4, 1e-3, 1e-2, 0.1),
                       'ssl_temp': (0.1, 0.2, 0.5, 1.0),
                       'ssl_alpha': (0.01, 0.05, 0.1, 0.5, 1.0)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(2), temp=spec.POSITIVE,
        ssl_temp=spec.POSITIVE, ssl_alpha=spec.NON_NEGATIVE,
        weight_decay=spec.NON_NEGATIVE, n_layers=spec.integer(0)))

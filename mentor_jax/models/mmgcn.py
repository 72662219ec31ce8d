"""MMGCN (Wei et al., MM 2019) as in MMRec's src/models/mmgcn.py.

One GCN per modality over the user-item graph (edges both ways); the
representation is the mean of the modalities' outputs, for users and items
alike. A modality's GCN, for the frozen raw features F:

  x_0 = normalize([P ; F W_mlp + b_mlp])     (image: MLP to 256; text: F)
  per layer l = 1, 2, 3:
    h   = leaky_relu(mean_{j -> i} (x W_conv)_j)     (mean over neighbours)
    x^  = leaky_relu(x W_lin + b_lin) + E_id
    x   = leaky_relu([h ‖ x^] W_g + b_g)

with P a user-preference table and E_id the [U + I, d] ID table.
What MMRec's code does that the paper does not say (docs/paper_vs_code.md):
* E_id and both P tables are plain tensors, not `nn.Parameter`s, so the
  optimizer never updates them: they stay at their xavier-normal draws.
  Here they are non-trainable `Constant`s.
* `concate = 'False'` is a non-empty string, hence true: the concatenating
  g-layers run.
* Three layers, always; the yaml's n_layers is passed but never read.
* The graph is the distinct (user, item) pairs: MMRec's
  `inter_matrix(...).astype(float32)` sums duplicate rows into one entry
  before the edge list is taken, so a repeated row is one edge here too.
* Loss: -mean ln σ(pos - neg) + reg_weight * (mean of E_id² over the
  batch's user and item rows + mean of P_v²). Every tensor of the
  regularizer is frozen, so it has no gradient and only shifts the logged
  loss.
* Scoring ranks the representation of the last training forward
  (`self.result`), i.e. eval_embeddings='last_step'.
Initialization as upstream: xavier-normal on the conv weights, the three
x^ weights and the first g weight; torch's Linear default elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse

# MMRec: the image GCN projects the raw features to 256 first; the text GCN
# has no projection (dim_latent None).
IMAGE_LATENT_DIM = 256
N_LAYERS = 3  # Fixed by MMRec's GCN.forward.


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 1e-3
  spmm_kernel: str = 'csr'


class Constant(nnx.Variable):
  """A tensor of the model that upstream never trains."""


def _linear(key: jax.Array, d_in: int, d_out: int, *,
            xavier: bool) -> tuple[jax.Array, jax.Array]:
  """nn.Linear's init as (W [d_in, d_out], b); `xavier`: W re-drawn by
  xavier_normal_ as upstream does for some layers (the bias is kept)."""
  kw, kb = jax.random.split(key)
  w, b = init_lib.torch_linear_init(kb, d_in, d_out)
  if xavier:
    w = init_lib.xavier_normal(kw, (d_in, d_out))
  return w, b


class ModalGCN(nnx.Module):
  """The GCN of one modality (MMRec's `GCN` with concate on)."""

  def __init__(self, n_users: int, feat_dim: int, dim: int,
               latent_dim: int | None, *, rngs: nnx.Rngs):
    d_l = latent_dim or feat_dim
    self.preference = Constant(init_lib.xavier_normal(rngs.params(),
                                                      (n_users, d_l)))
    if latent_dim:
      w, b = _linear(rngs.params(), feat_dim, latent_dim, xavier=False)
      self.mlp_w, self.mlp_b = nnx.Param(w), nnx.Param(b)
    else:
      self.mlp_w = self.mlp_b = None
    d_in = d_l
    for layer in range(1, N_LAYERS + 1):
      # conv1 is [d_l, d_l], the later ones [d, d].
      setattr(self, f'conv{layer}_w', nnx.Param(
          init_lib.xavier_normal(rngs.params(), (d_in, d_in))))
      w, b = _linear(rngs.params(), d_in, dim, xavier=True)
      setattr(self, f'lin{layer}_w', nnx.Param(w))
      setattr(self, f'lin{layer}_b', nnx.Param(b))
      # Only g_layer1's weight is re-drawn by xavier_normal_ upstream.
      w, b = _linear(rngs.params(), d_in + dim, dim, xavier=layer == 1)
      setattr(self, f'g{layer}_w', nnx.Param(w))
      setattr(self, f'g{layer}_b', nnx.Param(b))
      d_in = dim


class MMGCN(nnx.Module):
  """Image and text GCNs and the frozen ID table [U + I, d]."""

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int,
               dim: int, *, rngs: nnx.Rngs):
    self.gcn_v = ModalGCN(n_users, dim_v, dim, IMAGE_LATENT_DIM, rngs=rngs)
    self.gcn_t = ModalGCN(n_users, dim_t, dim, None, rngs=rngs)
    self.id_emb = Constant(init_lib.xavier_normal(rngs.params(),
                                                  (n_users + n_items, dim)))


def mean_graph(adj: sparse.Csr) -> tuple[sparse.Csr, sparse.Csr]:
  """(M, Mᵀ): M x = the mean of x over each node's distinct neighbours.

  Built from the stored user-item graph's pattern (symmetric, columns
  ascending within a row, a repeated training row stored as repeated
  entries): the first entry of each run of equal columns counts, the
  repeats get 0. A node without neighbours gets 0, as PyG's scatter-mean.
  """
  starts = jnp.arange(adj.nnz) == adj.indptr[adj.rows]
  first = starts | (adj.indices != jnp.roll(adj.indices, 1))
  w = first.astype(adj.values.dtype)
  count = jax.ops.segment_sum(w, adj.rows, num_segments=adj.n_rows)
  count = jnp.maximum(count, 1.0)
  # The pattern is symmetric, so Mᵀ has the same arrays with the column
  # side's count: Mᵀ[r, c] = M[c, r] = A[r, c] / count[c].
  return (adj.with_values(w / count[adj.rows]),
          adj.with_values(w / count[adj.indices]))


def modal_forward(gcn: ModalGCN, feats: jax.Array, id_emb: jax.Array,
                  mean: tuple[sparse.Csr, sparse.Csr],
                  kernel: str) -> jax.Array:
  """One modality's [U + I, d] output (the module docstring's recursion)."""
  leaky = jax.nn.leaky_relu  # negative slope 0.01, as F.leaky_relu
  m, m_t = mean
  item_x = feats if gcn.mlp_w is None else (feats @ gcn.mlp_w[...]
                                            + gcn.mlp_b[...])
  x = losses.l2_normalize(jnp.concatenate([gcn.preference[...], item_x]))
  for layer in range(1, N_LAYERS + 1):
    conv_w = getattr(gcn, f'conv{layer}_w')[...]
    h = leaky(sparse.spmm(m, x @ conv_w, kernel=kernel, a_t=m_t))
    x_hat = leaky(x @ getattr(gcn, f'lin{layer}_w')[...]
                  + getattr(gcn, f'lin{layer}_b')[...]) + id_emb
    x = leaky(jnp.concatenate([h, x_hat], axis=1)
              @ getattr(gcn, f'g{layer}_w')[...]
              + getattr(gcn, f'g{layer}_b')[...])
  return x


def forward(model: MMGCN, data: data_lib.DeviceData,
            hp: Hparams) -> jax.Array:
  """The representation [U + I, d]: the mean over the two modalities."""
  mean = mean_graph(data.adj)
  id_emb = model.id_emb[...]
  out_v = modal_forward(model.gcn_v, data.feat_v, id_emb, mean,
                        hp.spmm_kernel)
  out_t = modal_forward(model.gcn_t, data.feat_t, id_emb, mean,
                        hp.spmm_kernel)
  return (out_v + out_t) / 2.0


def loss(model: MMGCN, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams,
         aux: Any = None) -> family.LossOutput:
  del key, aux
  rep = forward(model, data, hp)
  n_users = data.train_indptr.shape[0] - 1
  users, items = rep[:n_users], rep[n_users:]
  u = users[batch.users]
  pos = jnp.sum(u * items[batch.pos_items], -1)
  neg = jnp.sum(u * items[batch.neg_items], -1)
  mask = batch.mask
  id_emb = model.id_emb[...]
  # (E[user_tensor]² + E[item_tensor]²).mean() over the 2B interleaved
  # rows: each user twice, each positive and negative once.
  sq = lambda rows: jnp.sum(jnp.sum(id_emb[rows] ** 2, -1) * mask)
  n_real = jnp.maximum(jnp.sum(mask), 1.0)
  id_reg = (2.0 * sq(batch.users) + sq(n_users + batch.pos_items)
            + sq(n_users + batch.neg_items)) / (2.0 * n_real
                                                * id_emb.shape[1])
  pref_reg = jnp.mean(model.gcn_v.preference[...] ** 2)
  parts = {
      'bpr': losses.bpr_loss(pos, neg, mask, log_base=math.e),
      'reg': hp.reg_weight * (id_reg + pref_reg),
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: MMGCN, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  rep = forward(model, data, hp)
  n_users = data.train_indptr.shape[0] - 1
  return rep[:n_users], rep[n_users:]


def create_model(config: Any, dataset: data_lib.Dataset) -> MMGCN:
  a = dataset.arrays
  return MMGCN(dataset.n_users, dataset.n_items, a['feat_v'].shape[1],
               a['feat_t'].shape[1], config.embedding_size,
               rngs=nnx.Rngs(params=config.seed))


MMGCN_FAMILY = family.ModelFamily(
    name='mmgcn', display_name='MMGCN', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    sweepable=frozenset({'reg_weight'}),
    # Its user and item tables are constants (never trained upstream), so
    # nothing is row-sharded: shard_tables is refused for it.
    table_params=(),
    # MMGCN.yaml's grid; ranks the last training forward's embeddings, as
    # MMRec's `self.result`.
    defaults={'embedding_size': 64, 'eval_embeddings': 'last_step',
              'grid': {'reg_weight': (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1),
                       'learning_rate': (1e-4, 5e-4, 1e-3, 5e-3, 1e-2)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE))

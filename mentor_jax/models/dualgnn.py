"""DualGNN (Wang et al., TMM 2021) as in MMRec's src/models/dualgnn.py.

Per modality m in {v, t}, with a user preference table P_m [U, 64] and an
MLP_m = Linear(F_m -> 256), leaky_relu(0.01), Linear(256 -> 64):

  x_m   = normalize([P_m ; MLP_m(F_m)])            rows, (U + I) x 64
  rep_m = x_m + Â x_m + Â² x_m

with Â = D^-1/2 A D^-1/2 of the distinct training (user, item) pairs (MMRec's
`inter_matrix(...).astype(float32)` sums repeated rows into one entry, and
its conv, `Base_gcn`, counts degrees over the edge list; `num_layer = 1`, but
the one parameter-free conv is applied twice). Then

  item_i = rep_v[i] + rep_t[i]
  u⁰     = w_u0 (rep_v + rep_t)[u] + w_u1 rep_t[u]       (see below)
  user_u = u⁰ + Σ_{j < 40} S_uj u⁰[N_uj]                 (one hop)
  score  = user_u · item_i

N and S come from the user co-occurrence graph (data_prep/user_graph.py),
re-sampled before every epoch (`pre_epoch_processing` -> `topk_sample(40)`;
here `epoch_setup`, on the device): a user's first 40 neighbours (most
shared training items first); a user with 1 <= n < 40 of them is padded to
40 by repeated draws, slot j copying slot randint(0, j) (the range grows
with the list: a Pólya urn); S_u = softmax of the padded lists' raw counts
(duplicates add weight); a user without neighbours aggregates nothing.

Loss: -mean log2 σ(s⁺ - s⁻) (log base 2, no epsilon) + reg_weight (mean
P_v[u]² + mean P_t[u]² over the batch users + mean w_u² + mean w_i²).
weight_i appears in this term only. Scores: the embeddings of the last
training forward (`result_embed`, eval_embeddings='last_step').

Where MMRec's code is not the paper's (docs/paper_vs_code.md):
* In-place fusion: `representation += t_rep` adds into v_rep's storage, so
  the user fusion is w_u0 (v + t) + w_u1 t, not the paper's (and the
  original code's) w_u0 v + w_u1 t. Kept (user_fusion='mmrec');
  user_fusion='paper' gives the paper's.
* The yaml's n_layers is never read; the dropped-edge graphs
  (edge_index_dropv/dropt) are built but `GCN.forward` ignores them, and
  MLP_v, MLP_t (64 x 64) and MLP_user are never used: none of them is built
  here (they only drew random numbers at init upstream).
Our own choices: the width is `embedding_size` (MMRec hard-codes 64, the
default); `score` (eval_embeddings='recompute' only) has no
random padding: it weights each user's unpadded neighbours by the softmax
of their counts; neighbour ties are ordered by a fixed hash of the user
pair (MMRec's torch.topk leaves them in an arbitrary order;
`user_graph_file` reads an MMRec file as it is).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_prep import user_graph as user_graph_lib
from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import family
from mentor_jax.ops import graph
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse

# MMRec's `self.k`: neighbours per user in the user graph (hard-coded).
MMREC_USER_K = 40
# MLP_m's hidden width is 4 x the embedding width (MMRec: 4 * dim_latent).
HIDDEN_FACTOR = 4
USER_FUSIONS = ('mmrec', 'paper')


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  reg_weight: float = 0.1  # DualGNN.yaml's first grid cell
  user_fusion: str = 'mmrec'
  spmm_kernel: str = 'csr'


class Constant(nnx.Variable):
  """Data-derived arrays that never train (the user graph's lists)."""


class ModalityGCN(nnx.Module):
  """MMRec's `GCN` of one modality: P_m and MLP_m (the conv has no weights)."""

  def __init__(self, n_users: int, feat_dim: int, dim: int, *,
               rngs: nnx.Rngs):
    self.preference = nnx.Param(init_lib.xavier_normal(rngs.params(),
                                                       (n_users, dim)))
    w, b = init_lib.torch_linear_init(rngs.params(), feat_dim,
                                      HIDDEN_FACTOR * dim)
    self.mlp_w, self.mlp_b = nnx.Param(w), nnx.Param(b)
    w, b = init_lib.torch_linear_init(rngs.params(), HIDDEN_FACTOR * dim, dim)
    self.mlp1_w, self.mlp1_b = nnx.Param(w), nnx.Param(b)


def fusion_weights(key: jax.Array, n: int) -> jax.Array:
  """[n, 2]: xavier_normal_ on an (n, 2, 1) tensor, softmax over the 2
  modalities once (MMRec's weight_u / weight_i init; free after that)."""
  return jax.nn.softmax(init_lib.xavier_normal(key, (n, 2, 1)), axis=1)[..., 0]


class DualGNN(nnx.Module):
  """Two modality GCNs, the fusion weights and the user graph's lists."""

  def __init__(self, n_users: int, n_items: int, dim_v: int, dim_t: int,
               dim: int, neighbours: tuple[np.ndarray, np.ndarray, np.ndarray],
               *, rngs: nnx.Rngs):
    self.gcn_v = ModalityGCN(n_users, dim_v, dim, rngs=rngs)
    self.gcn_t = ModalityGCN(n_users, dim_t, dim, rngs=rngs)
    self.weight_u = nnx.Param(fusion_weights(rngs.params(), n_users))
    self.weight_i = nnx.Param(fusion_weights(rngs.params(), n_items))
    nbr, cnt, n_real = neighbours
    self.user_nbr = Constant(jnp.asarray(nbr, jnp.int32))  # [U, k]
    self.user_cnt = Constant(jnp.asarray(cnt, jnp.float32))  # [U, k]
    self.user_deg = Constant(jnp.asarray(n_real, jnp.int32))  # [U]


def first_neighbours(nbr: np.ndarray, cnt: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first k entries of each list, as `topk_sample` reads them.

  Args:
    nbr: int [U, w] neighbour ids, -1 padding at the end of a row.
    cnt: [U, w] their counts.
    k: entries kept (MMRec's 40).

  Returns:
    (ids int32 [U, k] with 0 on padding, as MMRec's all-zero row for a user
    without neighbours; counts float32 [U, k], 0 on padding; n int32 [U],
    the real entries min(list length, k): a user is padded iff 1 <= n < k).
  """
  n_users, width = nbr.shape
  if width < k:
    nbr = np.concatenate([nbr, np.full((n_users, k - width), -1)], 1)
    cnt = np.concatenate([cnt, np.zeros((n_users, k - width))], 1)
  nbr, cnt = nbr[:, :k], cnt[:, :k]
  real = nbr >= 0
  return (np.where(real, nbr, 0).astype(np.int32),
          np.where(real, cnt, 0).astype(np.float32),
          real.sum(1).astype(np.int32))


def pad_neighbours(key: jax.Array, nbr: jax.Array, cnt: jax.Array,
                   n_real: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`topk_sample`'s padding: (ids [U, k], counts [U, k]) of one epoch.

  For a user with 1 <= n < k real entries, slots j = n .. k-1 are filled in
  order, each with a copy (id and count) of slot randint(0, j) of the list
  as it stands. Other rows are returned as they are.
  """
  n_users, k = nbr.shape
  grows = n_real >= 1

  def fill(carry, j):
    ids, counts = carry
    pick = jax.random.randint(jax.random.fold_in(key, j), (n_users, 1), 0,
                              jnp.maximum(j, 1))
    new = grows & (j >= n_real)
    ids = ids.at[:, j].set(jnp.where(
        new, jnp.take_along_axis(ids, pick, 1)[:, 0], ids[:, j]))
    counts = counts.at[:, j].set(jnp.where(
        new, jnp.take_along_axis(counts, pick, 1)[:, 0], counts[:, j]))
    return (ids, counts), None

  (nbr, cnt), _ = jax.lax.scan(fill, (nbr, cnt), jnp.arange(k))
  return nbr, cnt


def neighbour_weights(cnt: jax.Array, valid: jax.Array) -> jax.Array:
  """Softmax of the counts over each row's `valid` slots; 0 elsewhere, and
  an all-zero row where none is valid (a user without neighbours)."""
  top = jnp.max(jnp.where(valid, cnt, -jnp.inf), axis=1, keepdims=True)
  e = jnp.where(valid, jnp.exp(cnt - jnp.where(jnp.isfinite(top), top, 0.0)),
                0.0)
  total = jnp.sum(e, axis=1, keepdims=True)
  return e / jnp.where(total > 0, total, 1.0)


def epoch_user_graph(model: DualGNN, key: jax.Array | None
                     ) -> tuple[sparse.Csr, sparse.Csr]:
  """(S, Sᵀ), S [U, U] the epoch's user graph (key None: unpadded).

  One entry per slot; a neighbour drawn twice is two entries that add up.
  """
  nbr, cnt, n_real = (model.user_nbr[...], model.user_cnt[...],
                      model.user_deg[...])
  slots = jnp.arange(nbr.shape[1])[None, :]
  if key is None:
    weights = neighbour_weights(cnt, slots < n_real[:, None])
  else:
    nbr, cnt = pad_neighbours(key, nbr, cnt, n_real)
    # Padded rows use all k slots; rows of users without neighbours none.
    weights = neighbour_weights(cnt, jnp.broadcast_to(
        n_real[:, None] >= 1, nbr.shape))
  return graph.neighbour_csr(nbr, weights)


def distinct_pair_graph(adj: sparse.Csr) -> sparse.Csr:
  """MMRec's Â over distinct (user, item) pairs, on the stored pattern.

  The stored graph keeps a repeated training row as repeated entries
  (columns ascending within a row); here the first of each run counts and
  the repeats get 0, with degrees counted the same way. Symmetric.
  """
  starts = jnp.arange(adj.nnz) == adj.indptr[adj.rows]
  first = (starts | (adj.indices != jnp.roll(adj.indices, 1))).astype(
      adj.values.dtype)
  deg = jax.ops.segment_sum(first, adj.rows, num_segments=adj.n_rows)
  inv_sqrt = jnp.where(deg > 0, jax.lax.rsqrt(jnp.maximum(deg, 1.0)), 0.0)
  return adj.with_values(first * inv_sqrt[adj.rows] * inv_sqrt[adj.indices])


def modality_representation(gcn: ModalityGCN, feats: jax.Array,
                            adj: sparse.Csr, kernel: str) -> jax.Array:
  """rep_m = x + Âx + Â²x, x = normalize([P_m ; MLP_m(F_m)]); [U + I, d]."""
  hidden = jax.nn.leaky_relu(feats @ gcn.mlp_w[...] + gcn.mlp_b[...])
  item_x = hidden @ gcn.mlp1_w[...] + gcn.mlp1_b[...]
  x = losses.l2_normalize(jnp.concatenate([gcn.preference[...], item_x]))
  h = sparse.spmm(adj, x, kernel=kernel)
  return x + h + sparse.spmm(adj, h, kernel=kernel)


def forward(model: DualGNN, data: data_lib.DeviceData,
            user_graph: tuple[sparse.Csr, sparse.Csr],
            hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(users [U, d], items [I, d]) with the user graph (S, Sᵀ)."""
  adj = distinct_pair_graph(data.adj)
  rep_v = modality_representation(model.gcn_v, data.feat_v, adj,
                                  hp.spmm_kernel)
  rep_t = modality_representation(model.gcn_t, data.feat_t, adj,
                                  hp.spmm_kernel)
  n_users = model.weight_u.shape[0]
  fused = rep_v + rep_t
  # MMRec's `representation += t_rep` has already turned v_rep into v + t
  # when the users are fused.
  first = fused if hp.user_fusion == 'mmrec' else rep_v
  w = model.weight_u[...]
  users = w[:, :1] * first[:n_users] + w[:, 1:] * rep_t[:n_users]
  s, s_t = user_graph
  users = users + sparse.spmm(s, users, kernel=hp.spmm_kernel, a_t=s_t)
  return users, fused[n_users:]


def epoch_setup(ctx: family.EpochContext, params: Any, opt_state: Any,
                key: jax.Array) -> family.EpochStart:
  """MMRec's `pre_epoch_processing`: this epoch's padded user graph."""
  return family.EpochStart(params, opt_state,
                           aux=epoch_user_graph(ctx.model(params), key))


def loss(model: DualGNN, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams, aux: Any = None) -> family.LossOutput:
  """The loss with the epoch's user graph `aux` (unpadded if None)."""
  del key
  user_graph = epoch_user_graph(model, None) if aux is None else aux
  users, items = forward(model, data, user_graph, hp)
  u, mask = users[batch.users], batch.mask
  pos = jnp.sum(u * items[batch.pos_items], -1)
  neg = jnp.sum(u * items[batch.neg_items], -1)
  pref = lambda gcn: losses.masked_mean(gcn.preference[...][batch.users] ** 2,
                                        mask)
  parts = {
      # log2 of the float32 sigmoid, as written upstream: +inf (and NaN
      # gradients) where it underflows, which ends a diverging run (lr 0.1
      # on TikTok in epoch 0) as it ends MMRec's.
      'bpr': losses.bpr_loss(pos, neg, mask, log_base=2.0, stable=False),
      'reg': hp.reg_weight * (pref(model.gcn_v) + pref(model.gcn_t)
                              + jnp.mean(model.weight_u[...] ** 2)
                              + jnp.mean(model.weight_i[...] ** 2)),
  }
  return sum(parts.values()), (parts, (users, items))


def score(model: DualGNN, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """A clean forward pass (eval_embeddings='recompute'): no random padding."""
  return forward(model, data, epoch_user_graph(model, None), hp)


def user_neighbours(config: Any, dataset: data_lib.Dataset
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The user graph's lists: an MMRec file if `config.user_graph_file`
  names one (or its folder), else built from the training rows once per
  dataset and kept next to the .npz (data_prep/user_graph.py)."""
  if config.user_graph_file:
    return user_graph_lib.load_mmrec_file(
        datasets.resolve_data_path(config.user_graph_file), dataset.n_users)
  indptr, items = dataset.split('train')
  return user_graph_lib.neighbours_for_dataset(dataset.path, indptr, items,
                                               dataset.n_items)


def create_model(config: Any, dataset: data_lib.Dataset) -> DualGNN:
  nbr, cnt = user_neighbours(config, dataset)
  return DualGNN(dataset.n_users, dataset.n_items, dataset.dim_v,
                 dataset.dim_t, config.embedding_size,
                 first_neighbours(nbr, cnt, config.user_k),
                 rngs=nnx.Rngs(params=config.seed))


DUALGNN_FAMILY = family.ModelFamily(
    name='dualgnn', display_name='DualGNN', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    epoch_setup=epoch_setup,
    sweepable=frozenset({'reg_weight'}),
    table_params=('preference', 'weight_u', 'weight_i'),
    report_keys=('user_fusion',),
    # DualGNN.yaml: its grid (learning_rate included), whose first cell
    # (aggr_mode 'add', learning_rate 0.1, reg_weight 0.1) is the default;
    # MMRec ranks `result_embed`, the last training forward's output.
    defaults={'embedding_size': 64, 'learning_rate': 0.1,
              'eval_embeddings': 'last_step', 'aggr_mode': 'add',
              'user_k': MMREC_USER_K, 'user_graph_file': '',
              'grid': {'aggr_mode': ('add',),
                       'learning_rate': (0.1, 0.01, 1e-3, 1e-4, 1e-5),
                       'reg_weight': (0.1, 0.01, 1e-3, 1e-4, 1e-5)}},
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE, user_fusion=spec.choice(*USER_FUSIONS),
        # MMRec's Base_gcn with 'add' (normalized sum): the yaml's only value.
        aggr_mode=spec.choice('add'),
        user_k=spec.integer(1, user_graph_lib.MMREC_TOP),
        user_graph_file=spec.text()))

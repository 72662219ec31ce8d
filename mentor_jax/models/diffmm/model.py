"""DiffMM as the official HKUDS/DiffMM code (Model.py, Main.py) computes it.

Each epoch (`Main.trainEpoch`), in the order the official code runs it:

1. Denoiser phase (`epoch_setup`, a `lax.scan` over shuffled batches of
   user rows of R, scattered per batch from the CSR): per modality the
   SNR-weighted x0 loss + e_loss * the graph-consistency term against the
   current (constant) item table and projected features; both denoisers
   step together (one Adam each: the optimizer state holds 'denoise' beside
   'rec', each masked to its parameters; Adam is elementwise, so one masked
   Adam over both denoisers is the two official ones).
2. Rebuild (no gradient, a second scan in user order): the reverse pass
   from the clean rows, the top-`rebuild_k` items per user -> a [U, k]
   graph per modality, D^-1/2(A + I)D^-1/2 with static nnz 2Uk + N, then
   the edge dropout (keep_rate) on every entry, self-loops included.
3. Recommender steps (`train_step`) over shuffled (user, pos, neg)
   triples, each negative uniform over all item ids outside the user's
   training items (`epoch_batches`, TrnData.negSampling): forward_MM on
   the base graph (with self-loops) and the rebuilt graphs; BPR -sum ln
   sigma / batch_size (a fixed divisor, also on the last, short batch),
   reg * (|E_u|^2 + |E_i|^2) over the full tables, and ssl_reg * the
   contrastive loss of `cl_method` (0: image vs text views; 1: the main
   embeddings vs each view) with denominators over all users / all items.

Evaluation ranks what the official `testEpoch` ranks: forward_MM with the
parameters after the epoch's last step on the epoch's (edge-dropped)
graphs. The last step returns that forward (`eval_embeddings='last_step'`).
`score` (`--config.eval_embeddings=recompute`, `recommend`) rebuilds the
graphs from the current parameters without edge dropout: identical for
keep_rate 1 (Baby, Sports), the expected graph otherwise.

Deviations, all deliberate: log sigma is `log_sigmoid` (the
official sigmoid().log() is the same where it is finite); the contrastive
loss uses logsumexp (equal in exact arithmetic); two modalities (the
project's data has no third; TikTok's audio fills the text slot); selection
by validation, not test (the project's protocol).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax.models.diffmm import diffusion
from mentor_jax.models.diffmm import graphs as graphs_lib
from mentor_jax.ops import init as init_lib
from mentor_jax.ops import losses
from mentor_jax.ops import sparse

MODALITIES = ('v', 't')


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  """Params.py's defaults with README's Baby command (reg 1e-5, ssl_reg
  0.1, keepRate 1, e_loss 0.01); `OFFICIAL_COMMANDS` has each dataset's,
  which configs/<dataset>.py:diffmm applies."""
  reg_weight: float = 1e-5       # --reg
  ssl_reg: float = 0.1
  temp: float = 0.5
  keep_rate: float = 1.0         # --keepRate
  e_loss: float = 0.01
  ris_lambda: float = 0.5
  ris_adj_lambda: float = 0.2
  trans: int = 0                 # 0: LeakyReLU(F W); 1: Linear
  cl_method: int = 0             # 0: modality vs modality; 1: vs main
  n_layers: int = 1              # --gnn_layer
  rebuild_k: int = 1
  denoise_hidden: int = 1000     # --dims [1000]
  time_emb_dim: int = 10         # --d_emb_size
  diffusion_steps: int = 5       # --steps
  noise_scale: float = 0.1
  noise_min: float = 1e-4
  noise_max: float = 0.02
  spmm_kernel: str = 'csr'


# README L30-46 (every other setting at its Params.py default, Hparams):
# the family's dataset_defaults.
OFFICIAL_COMMANDS = {
    'baby': {'reg_weight': 1e-5, 'ssl_reg': 1e-1, 'keep_rate': 1.0,
             'e_loss': 0.01},
    'sports': {'reg_weight': 1e-6, 'ssl_reg': 1e-2, 'temp': 0.1,
               'ris_lambda': 0.1, 'e_loss': 0.5, 'keep_rate': 1.0,
               'trans': 1},
    'tiktok': {'reg_weight': 1e-4, 'ssl_reg': 1e-2, 'epochs': 50,
               'trans': 1, 'e_loss': 0.1, 'cl_method': 1,
               'keep_rate': 0.5},
}


class Denoiser(nnx.Module):
  def __init__(self, params: dict[str, jax.Array]):
    for name, value in params.items():
      setattr(self, name, nnx.Param(value))

  def arrays(self) -> dict[str, jax.Array]:
    return {k: v[...] for k, v in vars(self).items()
            if isinstance(v, nnx.Param)}


class DiffMM(nnx.Module):
  """uEmbeds, iEmbeds, the modality projections, modal_weight, and one
  denoiser per modality (trained by its own optimizer)."""

  def __init__(self, n_users: int, n_items: int, feat_dims: tuple[int, int],
               dim: int, hp: Hparams, *, rngs: nnx.Rngs):
    self.user_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_users, dim)))
    self.item_emb = nnx.Param(init_lib.xavier_uniform(rngs.params(),
                                                      (n_items, dim)))
    for m, f in zip(MODALITIES, feat_dims):
      if hp.trans == 1:  # nn.Linear's default init.
        w, b = init_lib.torch_linear_init(rngs.params(), f, dim)
        setattr(self, f'trans_{m}_b', nnx.Param(b))
      else:  # nn.Parameter(xavier_uniform_(empty(F, d))).
        w = init_lib.xavier_uniform(rngs.params(), (f, dim))
      setattr(self, f'trans_{m}_w', nnx.Param(w))
    self.modal_weight = nnx.Param(jnp.full((2,), 0.5, jnp.float32))
    for m in MODALITIES:
      setattr(self, f'denoise_{m}', Denoiser(diffusion.init_denoiser(
          rngs.params(), n_items, hp.denoise_hidden, hp.time_emb_dim)))


def modal_feats(model: DiffMM, data: data_lib.DeviceData,
                hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """getImageFeats / getTextFeats: [I, d] per modality."""
  out = []
  for m, raw in zip(MODALITIES, (data.feat_v, data.feat_t)):
    h = raw @ getattr(model, f'trans_{m}_w')[...]
    if hp.trans == 1:
      out.append(h + getattr(model, f'trans_{m}_b')[...])
    else:
      out.append(jax.nn.leaky_relu(h, 0.2))
  return tuple(out)


def _spmm(a: sparse.Csr, x: jax.Array, hp: Hparams,
          a_t: sparse.Csr | None = None) -> jax.Array:
  return sparse.spmm(a, x, kernel=hp.spmm_kernel, a_t=a_t)


def _propagate_sum(adj: sparse.Csr, x: jax.Array, hp: Hparams) -> jax.Array:
  """sum_{l=0..L} Â^l x (the gcnLayers loop)."""
  total = x
  for _ in range(hp.n_layers):
    x = _spmm(adj, x, hp)
    total = total + x
  return total


def forward(model: DiffMM, data: data_lib.DeviceData, graphs: dict,
            hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """`forward_MM`: (users, items) on the base and rebuilt graphs."""
  users, items = model.user_emb[...], model.item_emb[...]
  n_users = users.shape[0]
  adj = graphs['adj']
  ids = jnp.concatenate([users, items])
  weight = jax.nn.softmax(model.modal_weight[...])
  modal = 0.0
  for k, (m, f) in enumerate(zip(MODALITIES, modal_feats(model, data, hp))):
    g, g_t = graphs[m]
    from_graph = _spmm(g, ids, hp, g_t)
    x = _spmm(adj, jnp.concatenate([users, losses.l2_normalize(f)]), hp)
    x = x + _spmm(adj, jnp.concatenate([x[:n_users], items]), hp)
    modal = modal + weight[k] * (x + hp.ris_adj_lambda * from_graph)
  out = _propagate_sum(adj, modal, hp) + hp.ris_lambda * (
      losses.l2_normalize(modal))
  return out[:n_users], out[n_users:]


def forward_views(model: DiffMM, data: data_lib.DeviceData, graphs: dict,
                  hp: Hparams) -> list[tuple[jax.Array, jax.Array]]:
  """`forward_cl_MM`: per modality sum_l Â^l (Â_m [E_u; n(f_m)])."""
  users = model.user_emb[...]
  n_users = users.shape[0]
  out = []
  for m, f in zip(MODALITIES, modal_feats(model, data, hp)):
    g, g_t = graphs[m]
    x = _spmm(g, jnp.concatenate([users, losses.l2_normalize(f)]), hp, g_t)
    x = _propagate_sum(graphs['adj'], x, hp)
    out.append((x[:n_users], x[n_users:]))
  return out


def contrast_loss(a: jax.Array, b: jax.Array, nodes: jax.Array,
                  mask: jax.Array, temp: Any) -> jax.Array:
  """Utils.contrastLoss: mean over the batch's nodes (repeats counted) of
  -log(e^{<â_n, b̂_n>/τ} / sum_j e^{<â_n, b̂_j>/τ}), j over all rows of b."""
  a_n = losses.l2_normalize(a)[nodes]
  b_hat = losses.l2_normalize(b)
  pos = jnp.sum(a_n * b_hat[nodes], -1) / temp
  lse = jax.nn.logsumexp(a_n @ b_hat.T / temp, axis=-1)
  return jnp.sum(mask * (lse - pos)) / jnp.maximum(jnp.sum(mask), 1.0)


def rec_losses(model: DiffMM, data: data_lib.DeviceData,
               batch: data_lib.Batches, graphs: dict, hp: Hparams
               ) -> tuple[dict[str, jax.Array], tuple[jax.Array, jax.Array]]:
  users, items = forward(model, data, graphs, hp)
  u, mask = users[batch.users], batch.mask
  diff = (jnp.sum(u * items[batch.pos_items], -1)
          - jnp.sum(u * items[batch.neg_items], -1))
  views = forward_views(model, data, graphs, hp)
  c = lambda a, b, ids: contrast_loss(a, b, ids, mask, hp.temp)
  if hp.cl_method == 1:
    pairs = [((users, items), view) for view in views]
  else:
    pairs = [(views[0], views[1])]
  cl = sum(c(a[0], b[0], batch.users) + c(a[1], b[1], batch.pos_items)
           for a, b in pairs)
  parts = {
      # A fixed divisor: args.batch, also for the last, short batch.
      'bpr': -jnp.sum(mask * jax.nn.log_sigmoid(diff)) / hp.batch_size,
      'reg': hp.reg_weight * (jnp.sum(model.user_emb[...] ** 2)
                              + jnp.sum(model.item_emb[...] ** 2)),
      'cl': hp.ssl_reg * cl,
  }
  return parts, (users, items)


def loss(model: DiffMM, data: data_lib.DeviceData, batch: data_lib.Batches,
         key: jax.Array, hp: Hparams, aux: dict | None = None
         ) -> family.LossOutput:
  """The recommender's loss on the epoch's graphs `aux`."""
  del key
  graphs = aux if aux is not None else rebuild_graphs(model, data, hp, None)
  parts, scores = rec_losses(model, data, batch, graphs, hp)
  return sum(parts.values()), (parts, scores)


def epoch_batches(key: jax.Array, data: data_lib.DeviceData,
                  hp: Hparams) -> data_lib.Batches:
  """DataHandler's TrnData: every training row once, shuffled, its
  negative uniform over ALL item ids (`np.random.randint(args.item)`)
  outside the user's training items, not MMRec's items-in-train only:
  items that occur only in valid/test are negatives here (TikTok: 465 of
  6,710)."""
  return data_lib.epoch_batches(key, data, hp.batch_size, hp.max_row_len,
                                all_items=True)


def _sched(hp: Hparams) -> diffusion.Schedule:
  return diffusion.schedule(hp.diffusion_steps, hp.noise_scale, hp.noise_min,
                            hp.noise_max)


def _user_batches(n_users: int, batch_size: int, key: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array]:
  """[n_b, B] users (shuffled if `key`) and their 0/1 padding mask."""
  order = (jnp.arange(n_users) if key is None
           else jax.random.permutation(key, n_users))
  n_b = -(-n_users // batch_size)
  pad = n_b * batch_size - n_users
  users = jnp.concatenate([order, jnp.zeros(pad, order.dtype)])
  mask = jnp.concatenate([jnp.ones(n_users), jnp.zeros(pad)])
  return (users.reshape(n_b, batch_size).astype(jnp.int32),
          mask.reshape(n_b, batch_size))


def rebuild_graphs(model: DiffMM, data: data_lib.DeviceData, hp: Hparams,
                   key: jax.Array | None) -> dict:
  """{'adj': Â_s, 'v'/'t': (Â_m, Â_mᵀ)}: the base graph and the graphs of
  the denoisers' top-k items per user; edge dropout when `key` is given."""
  n_users = data.train_indptr.shape[0] - 1
  n_items = data.feat_v.shape[0]
  sched = _sched(hp)
  dens = [jax.lax.stop_gradient(getattr(model, f'denoise_{m}').arrays())
          for m in MODALITIES]
  users, _ = _user_batches(n_users, hp.batch_size, None)

  def top_items(_, batch_users):
    x0 = diffusion.dense_rows(data.train_indptr, data.train_items,
                              batch_users, n_items, hp.max_row_len)
    return None, [jax.lax.top_k(diffusion.reverse_pass(p, x0, sched),
                                hp.rebuild_k)[1] for p in dens]

  _, cols = jax.lax.scan(top_items, None, users)
  adj = graphs_lib.normalized_with_self_loops(
      data.train_user, data.train_item, n_users, n_items)
  out = {'adj': adj}
  owners = jnp.repeat(jnp.arange(n_users), hp.rebuild_k)
  for k, m in enumerate(MODALITIES):
    picked = cols[k].reshape(-1, hp.rebuild_k)[:n_users].reshape(-1)
    g = graphs_lib.normalized_with_self_loops(owners, picked, n_users,
                                              n_items)
    if key is not None:
      g = graphs_lib.drop_edges(g, jax.random.fold_in(key, k), hp.keep_rate)
    out[m] = (g, graphs_lib.transpose_symmetric_pattern(g))
  return out


def _is_denoiser(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'denoise_' in jax.tree_util.keystr(path), params)


def _groups(hp: Hparams) -> dict[str, optax.GradientTransformation]:
  """'rec': Main's self.opt; 'denoise': the denoisers' Adams (lr 1e-3 as
  the recommender's: the same --lr), each masked to its parameters."""
  rec = lambda p: jax.tree.map(lambda d: not d, _is_denoiser(p))
  return {'rec': optax.masked(family.adam(hp), rec),
          'denoise': optax.masked(optax.adam(hp.learning_rate, b1=0.9,
                                             b2=0.999, eps=1e-8),
                                  _is_denoiser)}


def make_optimizer(hp: Hparams) -> optax.GradientTransformation:
  """One state per group; the hooks apply each in turn (`apply_group`)."""
  groups = _groups(hp)

  def init(params):
    return {name: tx.init(params) for name, tx in groups.items()}

  def update(grads, state, params=None):
    raise NotImplementedError('DiffMM applies each optimizer itself')
  return optax.GradientTransformation(init, update)


def apply_group(hp: Hparams, name: str, grads: Any, opt_state: dict,
                params: Any) -> tuple[Any, dict]:
  """One step of optimizer `name` on its own parameters only."""
  updates, inner = _groups(hp)[name].update(grads, opt_state[name], params)
  mine = _is_denoiser(params)
  updates = jax.tree.map(
      lambda u, d: u if d == (name == 'denoise') else jnp.zeros_like(u),
      updates, mine)
  return optax.apply_updates(params, updates), {**opt_state, name: inner}


def denoiser_losses(model: DiffMM, x0: jax.Array, mask: jax.Array,
                    item_emb: jax.Array, feats: tuple[jax.Array, ...],
                    key: jax.Array, hp: Hparams) -> dict[str, jax.Array]:
  """Per modality: mean diff_loss + e_loss * mean gc_loss over the batch."""
  out = {}
  for k, (m, f) in enumerate(zip(MODALITIES, feats)):
    diff, gc = diffusion.training_losses(
        getattr(model, f'denoise_{m}').arrays(), x0, item_emb, f,
        jax.random.fold_in(key, k), _sched(hp))
    mean = lambda x: jnp.sum(mask * x) / jnp.maximum(jnp.sum(mask), 1.0)
    out[f'diff_{m}'] = mean(diff) + hp.e_loss * mean(gc)
  return out


def epoch_setup(ctx: family.EpochContext, params: Any, opt_state: Any,
                key: jax.Array) -> family.EpochStart:
  """The denoiser phase, then the rebuilt graphs as `aux`."""
  hp, data = ctx.hp, ctx.data
  n_users = data.train_indptr.shape[0] - 1
  n_items = data.feat_v.shape[0]
  perm_key, train_key, drop_key = jax.random.split(key, 3)
  model = ctx.model(params)
  item_emb = jax.lax.stop_gradient(model.item_emb[...])
  feats = jax.lax.stop_gradient(modal_feats(model, data, hp))
  users, masks = _user_batches(n_users, hp.batch_size, perm_key)

  def one(carry, xs):
    p, state = carry
    batch_users, mask, i = xs
    x0 = diffusion.dense_rows(data.train_indptr, data.train_items,
                              batch_users, n_items, hp.max_row_len)

    def phase_loss(p):
      parts = denoiser_losses(ctx.model(p), x0, mask, item_emb, feats,
                              jax.random.fold_in(train_key, i), hp)
      return sum(parts.values()), parts

    (_, parts), grads = jax.value_and_grad(phase_loss, has_aux=True)(p)
    p, state = apply_group(hp, 'denoise', grads, state, p)
    return (p, state), parts

  (params, opt_state), parts = jax.lax.scan(
      one, (params, opt_state), (users, masks, jnp.arange(users.shape[0])))
  graphs = rebuild_graphs(ctx.model(params), data, hp, drop_key)
  return family.EpochStart(params, opt_state, aux=graphs, parts=parts)


def train_step(ctx: family.EpochContext, params: Any, opt_state: Any,
               batch: Any, key: jax.Array, index: jax.Array
               ) -> family.StepOutput:
  """One recommender step; the epoch's last step also returns forward_MM
  after its update (what the official testEpoch ranks)."""
  (_, (parts, scores)), grads = jax.value_and_grad(
      ctx.loss, has_aux=True)(params, batch, key)
  params, opt_state = apply_group(ctx.hp, 'rec', grads, opt_state, params)
  scores = jax.lax.cond(
      index == ctx.hp.steps_per_epoch - 1,
      lambda: forward(ctx.model(params), ctx.data, ctx.aux, ctx.hp),
      lambda: scores)
  return family.StepOutput(params, opt_state, parts, scores)


def score(model: DiffMM, data: data_lib.DeviceData,
          hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """forward_MM on graphs rebuilt from the current parameters, without
  edge dropout (no key here): exact for keep_rate 1."""
  return forward(model, data, rebuild_graphs(model, data, hp, None), hp)


def create_model(config: Any, dataset: data_lib.Dataset) -> DiffMM:
  hp = Hparams(trans=config.trans, denoise_hidden=config.denoise_hidden,
               time_emb_dim=config.time_emb_dim)
  return DiffMM(dataset.n_users, dataset.n_items,
                (dataset.dim_v, dataset.dim_t), config.embedding_size, hp,
                rngs=nnx.Rngs(params=config.seed))


DIFFMM_FAMILY = family.ModelFamily(
    name='diffmm', display_name='DiffMM', hparams=Hparams,
    create_model=create_model, loss=loss, score=score,
    make_optimizer=make_optimizer, epoch_batches=epoch_batches,
    epoch_setup=epoch_setup, train_step=train_step,
    sweepable=frozenset({'reg_weight', 'ssl_reg', 'temp', 'e_loss',
                         'ris_lambda', 'ris_adj_lambda'}),
    table_params=('user_emb', 'item_emb'),
    report_keys=('ssl_reg', 'keep_rate', 'e_loss', 'trans', 'cl_method'),
    # Main.py: lr 1e-3, batch 1024 (both phases), latdim 64; the official
    # code ranks the epoch's own graphs (see the module docstring).
    defaults={'embedding_size': 64, 'learning_rate': 1e-3,
              'train_batch_size': 1024, 'eval_embeddings': 'last_step'},
    dataset_defaults=OFFICIAL_COMMANDS,
    config_spec=family.spec_from_hparams(
        Hparams, embedding_size=spec.integer(1),
        reg_weight=spec.NON_NEGATIVE, ssl_reg=spec.NON_NEGATIVE,
        temp=spec.number(1e-6), keep_rate=spec.number(1e-6, 1.0),
        e_loss=spec.NON_NEGATIVE, trans=spec.choice(0, 1),
        cl_method=spec.choice(0, 1), n_layers=spec.integer(0),
        rebuild_k=spec.integer(1), denoise_hidden=spec.integer(1),
        time_emb_dim=spec.integer(1), diffusion_steps=spec.integer(1)))

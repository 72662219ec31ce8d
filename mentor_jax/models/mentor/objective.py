"""MENTOR's training objective (MENTOR_SPEC §2.6) and its `ModelFamily`.

`Hparams` is the static, hashable set of settings that shape the compiled
step; `mentor_loss` composes the pure losses (`losses.py` here, and the
shared `ops.losses` and `ops.infonce`) on the outputs of `model.forward`.
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
from mentor_jax.models.mentor import losses
from mentor_jax.models.mentor import model as model_lib
from mentor_jax.ops import infonce
from mentor_jax.ops import losses as ops_losses
from mentor_jax.ops import precision as precision_lib


@dataclasses.dataclass(frozen=True)
class Hparams(family.TrainHparams):
  """Static settings of MENTOR's compiled train step (hashable for jit).

  The defaults are the official code's (MENTOR.yaml; the first cell of its
  grid); each is also a config key of the same name.
  """

  # Loss weights (the grid varies mask_weight_g and temp).
  reg_weight: float = 1e-3
  align_weight: float = 0.1
  mask_weight_f: float = 1.5
  dropout: float = 0.5
  mask_weight_g: float = 1e-4
  temp: float = 0.2
  # Two user-item layers are hard-coded upstream.
  n_ui_layers: int = 2
  # Item-item layers L: 1 code, the paper says only "multilayer".
  n_mm_layers: int = 1
  mm_image_weight: float = 0.1
  noise_eps: float = 0.1
  spmm_kernel: str = 'csr'
  # Engineering knobs (ops/infonce.py): 'fused' (blockwise, exact),
  # 'naive', 'sharded'; the block's rows.
  infonce_impl: str = 'fused'
  infonce_block_size: int = 256
  # 'all' (official): InfoNCE over every user and every item. 'batch':
  # over the batch's distinct users / positive items only (SimGCL
  # practice, O(B^2)); NOT the official semantics, for very large graphs.
  infonce_scope: str = 'all'
  # Code-vs-paper switches (MENTOR_SPEC §2.7; docs/paper_vs_code.md). Each
  # default is the official code; configs/paper.py sets the paper's values
  # (and knn_k: 10 code, 40 paper).
  # Fusion: 'per_user' = U x 2 table weight_u on the user side only (code);
  # 'alpha' = one trainable alpha (init 0.5) on users and items (Eq. 7).
  fusion: str = 'per_user'
  # Alignment statistics: 'global' = one mean / variance per view (code);
  # 'per_node' = per row over the feature dimension (Eq. 8).
  align_stats: str = 'global'
  # Dispersion compared by the alignment: 'variance' (code, and Eq. 8's
  # Var) or 'std' (the sigma symbol of Eq. 9-16 read literally).
  align_dispersion: str = 'variance'
  # Alignment levels in the paper's numbering (Fig. 3): 1 = (v, t),
  # 2 = (id, v) + (id, t), 3 = (f, v) + (f, t) + (f, id); () = MENTOR_base.
  align_levels: tuple[int, ...] = (1, 2, 3)
  # Feature masking: 'logged' = computed without gradient (code: a no-op
  # for training); 'gradient' = Eq. 17 as a real loss, stop-gradient on the
  # dropout view.
  feature_mask: str = 'logged'
  # Graph perturbation: 'separate_encoders' = four extra noise encoders
  # (code); 'own_encoders' = two perturbed passes of the v and t encoders
  # themselves (Eq. 18-20).
  perturbation: str = 'separate_encoders'
  # Noise after each UI layer: 'simgcl' = sign-aligned, per-node norm
  # noise_eps (code); 'uniform' = noise_eps * U(0, 1) per entry (Eq. 18-19,
  # with noise_eps = 1).
  noise: str = 'simgcl'
  # InfoNCE views: 'fused' = 128-d [w_v v || w_t t] views (code);
  # 'per_modality' = one InfoNCE per modality on 64-d views (Eq. 21).
  nce_views: str = 'fused'
  # Item-item aggregation added to the UI output x: 'power' = x + S^L x
  # (code, and the paper's "+ A^(l)"), 'sum' = x + sum_{l=1..L} S^l x.
  mm_aggregation: str = 'power'
  # BPR logarithm base: 2.0 (code: log2) or e (Eq. 23: ln).
  bpr_log_base: float = 2.0
  # L2 term: 'code' = reg_weight * (mean square of the batch users' v and t
  # preference rows + mean square of weight_u); 'paper' = reg_weight *
  # batch mean of the rows' squared norms, no weight_u (Eq. 24).
  reg_form: str = 'code'
  # Precision of the training matmuls (item MLPs, InfoNCE; ops/precision.py):
  # 'float32' (strict; the official code's), 'tf32' or 'bf16' (float32
  # accumulation). Evaluation always scores in float32. Unlike the knobs
  # above, the reduced ones change results (bench/RESULTS.md, "Precision").
  matmul_precision: str = 'float32'

  def __post_init__(self):
    # ml_collections hands sequences over as lists or tuples; the jit cache
    # needs a hashable value.
    object.__setattr__(self, 'align_levels', tuple(self.align_levels))
    validate_switches(self)


def _log_base(x) -> bool:
  return x > 0 and x != 1 and math.isfinite(x)


# Every config key MENTOR reads, with its allowed values. For the string
# switches the first choice is the official code's.
CONFIG_SPEC = family.spec_from_hparams(
    Hparams,
    # The width is hard-coded upstream (64); a config cannot change it.
    embedding_size=spec.choice(model_lib.EMBED_DIM),
    n_ui_layers=spec.integer(0),
    n_mm_layers=spec.integer(0),
    mm_image_weight=spec.number(0.0, 1.0),
    noise_eps=spec.NON_NEGATIVE,
    reg_weight=spec.NON_NEGATIVE,
    align_weight=spec.NON_NEGATIVE,
    mask_weight_f=spec.NON_NEGATIVE,
    dropout=spec.PROBABILITY_BELOW_1,
    mask_weight_g=spec.NON_NEGATIVE,
    temp=spec.POSITIVE,
    infonce_impl=spec.choice(*infonce.IMPLS),
    infonce_block_size=spec.integer(1),
    infonce_scope=spec.choice(*infonce.SCOPES),
    fusion=spec.choice(*model_lib.FUSIONS),
    align_stats=spec.choice('global', 'per_node'),
    align_dispersion=spec.choice('variance', 'std'),
    align_levels=spec.int_tuple(1, nonempty=False, allowed_values=tuple(
        losses.PAPER_ALIGN_LEVELS)),
    feature_mask=spec.choice('logged', 'gradient'),
    perturbation=spec.choice('separate_encoders', 'own_encoders'),
    noise=spec.choice(*model_lib.NOISES),
    nce_views=spec.choice('fused', 'per_modality'),
    mm_aggregation=spec.choice(*model_lib.MM_AGGREGATIONS),
    bpr_log_base=spec.Spec('positive numbers other than 1 (2.0 code, e '
                           'paper)', _log_base),
    reg_form=spec.choice('code', 'paper'),
    # Not a paper switch: reduced-precision matmuls (ops/precision.py).
    matmul_precision=spec.choice(*precision_lib.MATMUL_PRECISIONS),
)


def validate_switches(config: Any) -> None:
  """Raises ConfigError naming the key, its value and the allowed values.

  Args:
    config: a ConfigDict or an `Hparams`; keys it lacks are skipped.
  """
  get = (config.get if hasattr(config, 'get')
         else lambda k, d=None: getattr(config, k, d))
  for key, key_spec in CONFIG_SPEC.items():
    value = get(key, None)
    if value is not None:
      key_spec.validate(key, value)


def run_forward(model: model_lib.Mentor, data: data_lib.DeviceData,
                key: jax.Array | None, hp: Hparams,
                perturbed: bool = True) -> model_lib.Embeddings:
  """`model.forward` with `hp`'s settings.

  `perturbed=False` skips the paper-style perturbed passes of the own
  encoders (scoring does not need them); separate noise encoders, if the
  model has them, run regardless.
  """
  return model_lib.forward(
      model, data.feat_v, data.feat_t, data.adj, data.knn_v, data.knn_t, key,
      mm_image_weight=hp.mm_image_weight, n_mm_layers=hp.n_mm_layers,
      n_ui_layers=hp.n_ui_layers, noise_eps=hp.noise_eps,
      kernel=hp.spmm_kernel,
      perturb_own=perturbed and perturbs_own_encoders(hp),
      noise=hp.noise, mm_aggregation=hp.mm_aggregation,
      precision=hp.matmul_precision)


def perturbs_own_encoders(hp: Hparams) -> bool:
  """Whether the loss runs the paper's perturbed passes (Eq. 18-20)."""
  return hp.perturbation == 'own_encoders' and family.is_on(hp.mask_weight_g)


def _stack(u: jax.Array, i: jax.Array) -> jax.Array:
  return jnp.concatenate([u, i], axis=0)


def mentor_loss(model: model_lib.Mentor, data: data_lib.DeviceData,
                batch: data_lib.Batches, key: jax.Array, hp: Hparams,
                aux: Any = None
                ) -> tuple[jax.Array, tuple[dict[str, jax.Array],
                                            tuple[jax.Array, jax.Array]]]:
  """Total loss of one batch.

  Returns:
    (total, (parts, (R^u, R^i))): the loss parts as logged (each already
    multiplied by its weight) and the fused embeddings used for scoring.
  """
  del aux  # MENTOR builds nothing per epoch.
  noise_key, drop_key = jax.random.split(key)
  emb = run_forward(model, data, noise_key, hp)
  v = model_lib.build_views(emb)
  u, p, n, mask = batch.users, batch.pos_items, batch.neg_items, batch.mask

  user = v.fused_u[u]
  pos = jnp.sum(user * v.fused_i[p], axis=-1)
  neg = jnp.sum(user * v.fused_i[n], axis=-1)
  bpr = ops_losses.bpr_loss(pos, neg, mask, log_base=hp.bpr_log_base)

  pref_v = model.encoders['v'].preference[...][u]
  pref_t = model.encoders['t'].preference[...][u]
  if hp.reg_form == 'paper':
    reg = losses.l2_reg_norm(pref_v, pref_t, hp.reg_weight, mask)
  else:
    reg = losses.l2_reg(pref_v, pref_t, emb.weight_u, hp.reg_weight, mask)
  parts = {'bpr': bpr, 'reg': reg}

  # MENTOR_base (no levels or no weight) skips the term altogether.
  if family.is_on(hp.align_weight) and hp.align_levels:
    levels = sorted(c for lv in hp.align_levels
                    for c in losses.PAPER_ALIGN_LEVELS[lv])
    parts['align'] = hp.align_weight * losses.align_loss(
        _stack(v.fused_u, v.fused_i), _stack(v.ident_u, v.ident_i),
        _stack(v.visual_u, v.visual_i), _stack(v.textual_u, v.textual_i),
        levels=levels, stats=hp.align_stats, dispersion=hp.align_dispersion)

  if family.is_on(hp.mask_weight_f):
    parts['mask_f'] = hp.mask_weight_f * _feature_mask(model, v, drop_key,
                                                        hp)

  if family.is_on(hp.mask_weight_g) and (model.perturbed or perturbs_own_encoders(hp)):
    # Scale-out (ops/infonce.py): 'sharded' impl and 'batch' scope.
    nce = lambda a, b, ids: infonce.info_nce_loss(
        a, b, hp.temp, impl=hp.infonce_impl, block_size=hp.infonce_block_size,
        scope=hp.infonce_scope, ids=ids, mask=mask,
        precision=hp.matmul_precision)
    if hp.nce_views == 'per_modality':
      # Eq. 21: L_gv + L_gt, each over users and items, on 64-d views.
      vu, vi, tu, ti = model_lib.modality_noise_views(emb)
      parts['nce_g'] = hp.mask_weight_g * (
          nce(*vu, u) + nce(*vi, p) + nce(*tu, u) + nce(*ti, p))
    else:
      (n1u, n1i), (n2u, n2i) = model_lib.noise_views(emb)
      parts['nce_g'] = hp.mask_weight_g * (nce(n1u, n2u, u)
                                           + nce(n1i, n2i, p))
  total = sum(parts.values())
  return total, (parts, (v.fused_u, v.fused_i))


def _feature_mask(model: model_lib.Mentor, v: model_lib.Views,
                  key: jax.Array, hp: Hparams) -> jax.Array:
  """The feature-masking loss (Eq. 17), unweighted.

  'logged' (code): computed under no_grad upstream, so it is logged with zero
  gradient (MENTOR_SPEC §2.4). 'gradient' (paper): the dropout view is the
  stop-gradient target, as the paper says ("we place stop-gradient on
  E_u-dot and E_i-dot", the dropped views); the MLP view keeps its gradient,
  which trains the MLP and, through R, the encoders and the fusion weights.
  """
  keep = 1.0 - hp.dropout
  ku, ki = jax.random.split(key)
  drop = lambda k, x: jnp.where(jax.random.bernoulli(k, keep, x.shape),
                                x / keep, 0.0)
  mlp = lambda x: precision_lib.matmul(
      x, model.mask_w[...], hp.matmul_precision) + model.mask_b[...]
  if hp.feature_mask == 'gradient':
    fu, fi = v.fused_u, v.fused_i
    du, di = jax.lax.stop_gradient((drop(ku, fu), drop(ki, fi)))
    return losses.feature_mask_loss(fu, fi, du, di, mlp(fu), mlp(fi),
                                    stop_gradient=False)
  fu, fi = jax.lax.stop_gradient((v.fused_u, v.fused_i))
  return jax.lax.stop_gradient(
      losses.feature_mask_loss(fu, fi, drop(ku, fu), drop(ki, fi),
                               jax.lax.stop_gradient(mlp(fu)),
                               jax.lax.stop_gradient(mlp(fi))))


def score_embeddings(model: model_lib.Mentor, data: data_lib.DeviceData,
                     hp: Hparams) -> tuple[jax.Array, jax.Array]:
  """(R^u, R^i) from a clean forward pass (no noise is used by R)."""
  emb = run_forward(model, data, jax.random.PRNGKey(0), hp, perturbed=False)
  v = model_lib.build_views(emb)
  return v.fused_u, v.fused_i


def create_model(config: Any, dataset: data_lib.Dataset) -> model_lib.Mentor:
  """MENTOR sized for `dataset`.

  Separate noise encoders exist only when graph perturbation is on and done
  the code's way; the paper's way perturbs the v and t encoders themselves.
  """
  validate_switches(config)
  separate = (bool(config.mask_weight_g) and config.get(
      'perturbation', 'separate_encoders') == 'separate_encoders')
  return model_lib.Mentor(
      dataset.n_users, dataset.n_items,
      dataset.dim_v, dataset.dim_t,
      perturbed=separate, fusion=config.get('fusion', 'per_user'),
      rngs=nnx.Rngs(params=config.seed))


MENTOR = family.ModelFamily(
    name='mentor', display_name='MENTOR', hparams=Hparams,
    create_model=create_model, loss=mentor_loss, score=score_embeddings,
    sweepable=frozenset({'reg_weight', 'align_weight', 'mask_weight_f',
                         'mask_weight_g', 'dropout', 'temp',
                         'mm_image_weight', 'noise_eps'}),
    gated=frozenset({'align_weight', 'mask_weight_f', 'mask_weight_g'}),
    table_params=('preference', 'weight_u', 'id_feat'),
    report_keys=('mask_weight_g', 'temp'),
    config_spec=CONFIG_SPEC,
    # MENTOR.yaml's learning rate and its grid (mask_weight_g x temp; the
    # default is the first cell), MENTOR's overall.yaml's model selection
    # (valid Recall@10), and the official evaluation of the last training
    # forward's embeddings, one optimizer step stale.
    defaults={'embedding_size': model_lib.EMBED_DIM, 'learning_rate': 1e-4,
              'valid_metric': 'recall@10', 'eval_embeddings': 'last_step',
              'grid': {'mask_weight_g': (1e-4, 1e-3),
                       'temp': (0.2, 0.4, 0.6)}})

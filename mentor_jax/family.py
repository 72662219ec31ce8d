"""What the trainer needs from a model: the `ModelFamily` interface.

Every model (MENTOR, the MMRec baselines, ...) shares the data layer, the
compiled epoch, evaluation, checkpoints and stacking; a family supplies the
functions that make it that model, and owns its training where it differs
from MMRec's one-optimizer BPR loop. `registry.get(config.model)` returns
one. docs/ADDING_A_MODEL.md is the guide.

An epoch, as the trainer runs it (`epoch.py`), calls the hooks in order:

  batches = epoch_batches(key, data, hp)        # [n_steps, ...] pytree
  start = epoch_setup(ctx, params, opt_state, key)
  for each step i:                              # one lax loop
    params, opt_state, parts, scores = train_step(ctx, params, opt_state,
                                                  batches[i], key_i, i)

with `ctx.tx = make_optimizer(hp)` and `ctx.aux = start.aux`. Every hook is
a pure function of pytrees, so runs stack (vmap or scan over runs), shard
and checkpoint without the family's help; each defaults to MMRec's trainer.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mentor_jax import config_spec as spec_lib
from mentor_jax import data as data_lib


@dataclasses.dataclass(frozen=True)
class TrainHparams:
  """Static settings every family's compiled epoch needs (hashable)."""

  batch_size: int = 2048
  max_row_len: int = 1  # longest training row of a user (sampler bound)
  learning_rate: float = 1e-4
  # MMRec's `learning_rate_scheduler` [factor, every]: epoch e trains with
  # learning_rate * factor ** (e / every) (torch's LambdaLR, stepped once
  # per epoch). factor 1 is a constant rate.
  lr_decay: float = 1.0
  lr_decay_every: float = 50.0
  steps_per_epoch: int = 1  # derived; the schedule's epoch is step // this

  @classmethod
  def from_config(cls, config: Any, **overrides) -> 'TrainHparams':
    """Fields are read from the config key of the same name.

    `batch_size` comes from `train_batch_size` (the official name);
    `overrides` win, and those that are not fields of `cls` are ignored so
    that the trainer can offer every family the same derived values.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: config[k] for k in names if k in config}
    values['batch_size'] = config.train_batch_size
    if 'learning_rate_scheduler' in config:
      values['lr_decay'], values['lr_decay_every'] = (
          float(v) for v in config.learning_rate_scheduler)
    values.update({k: v for k, v in overrides.items() if k in names})
    return cls(**values)


# (total loss, (logged parts, (user embeddings, item embeddings)))
LossOutput = tuple[jax.Array, tuple[dict[str, jax.Array],
                                    tuple[jax.Array, jax.Array]]]


class EpochContext(NamedTuple):
  """What an epoch's hooks read besides the parameters (static in a trace).

  Attributes:
    family: the model family.
    graphdef, rest: the model's structure and non-trainable state
      (`nnx.split(model, nnx.Param, ...)`).
    data: the constant device data.
    hp: the static settings (traced values for a swept field of a stack).
    tx: `family.make_optimizer(hp)`.
    aux: what `epoch_setup` built for this epoch (None by default).
    epoch: this epoch's index from 0 (int32, traced), counted from the
      optimizer steps taken, so a resumed run goes on counting; for hooks
      that change with the epoch (LayerGCN alternates its edge sampling).
  """

  family: 'ModelFamily'
  graphdef: nnx.GraphDef
  rest: Any
  data: data_lib.DeviceData
  hp: TrainHparams
  tx: optax.GradientTransformation
  aux: Any = None
  epoch: Any = None

  def model(self, params: Any) -> nnx.Module:
    return nnx.merge(self.graphdef, params, self.rest)

  def loss(self, params: Any, batch: Any, key: jax.Array) -> LossOutput:
    """The family's loss at `params` for one batch."""
    return self.family.loss(self.model(params), self.data, batch, key,
                            self.hp, self.aux)


class EpochStart(NamedTuple):
  """What `epoch_setup` hands to the epoch's steps.

  Attributes:
    params, opt_state: the state the steps start from (a family that
      trains a part of the model before the steps, e.g. DiffMM's denoisers,
      returns the updated ones; the others return theirs unchanged).
    aux: a pytree every step reads as `ctx.aux` (e.g. this epoch's pruned
      graph, or the item graph built from the epoch's first parameters).
    parts: {name: [n]} loss parts of a phase run here, logged with the
      steps' parts (their mean is the epoch's value); None if none.
  """

  params: Any
  opt_state: Any
  aux: Any = None
  parts: dict[str, jax.Array] | None = None


class StepOutput(NamedTuple):
  params: Any
  opt_state: Any
  parts: dict[str, jax.Array]  # scalars, one value per step in the log
  scores: tuple[jax.Array, jax.Array]  # (user, item) of this step's forward


# --- the default hooks: MMRec's trainer --------------------------------------


def mmrec_schedule(hp: TrainHparams) -> optax.ScalarOrSchedule:
  """MMRec's learning rate as an optax schedule (count -> rate).

  MMRec steps torch's LambdaLR once per epoch with factor ** (epoch /
  every); `optax.exponential_decay(lr, steps_per_epoch, factor ** (1 /
  every), staircase=True)` is the same rate in exact arithmetic but rounds
  differently (up to 4e-7 relative in float32;
  tests/test_family_hooks.py), so the exponent is computed as MMRec
  computes it. A constant rate (factor 1) stays a plain float, which keeps
  optax's plain Adam state.
  """
  if hp.lr_decay == 1.0:
    return hp.learning_rate

  def learning_rate(count):
    epoch = (count // hp.steps_per_epoch).astype(jnp.float32)
    return hp.learning_rate * hp.lr_decay ** (epoch / hp.lr_decay_every)
  return learning_rate


def adam(hp: TrainHparams) -> optax.GradientTransformation:
  """MMRec's optimizer: Adam, weight decay 0, its learning-rate schedule."""
  return optax.adam(mmrec_schedule(hp), b1=0.9, b2=0.999, eps=1e-8)


def adam_with_l2(weight_decay: float) -> Callable[[TrainHparams],
                                                  optax.GradientTransformation]:
  """torch's `Adam(weight_decay=w)`: w * params added to the gradient
  before Adam's moments (coupled L2, not AdamW's decoupled decay), as
  MMRec's trainer builds it from a model yaml's `weight_decay`."""
  def make(hp: TrainHparams) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), adam(hp))
  return make


def triple_batches(key: jax.Array, data: data_lib.DeviceData,
                   hp: TrainHparams) -> data_lib.Batches:
  """MMRec's sampler: shuffled (user, positive, negative) rows."""
  return data_lib.epoch_batches(key, data, hp.batch_size, hp.max_row_len)


def no_epoch_setup(ctx: EpochContext, params: Any, opt_state: Any,
                   key: jax.Array) -> EpochStart:
  del ctx, key
  return EpochStart(params, opt_state)


def apply_gradients(ctx: EpochContext, loss_fn: Callable[..., LossOutput],
                    params: Any, opt_state: Any, *args: Any) -> StepOutput:
  """One optimizer step on `loss_fn(params, *args)` with `ctx.tx`."""
  (_, (parts, scores)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params, *args)
  updates, opt_state = ctx.tx.update(grads, opt_state, params)
  return StepOutput(optax.apply_updates(params, updates), opt_state, parts,
                    scores)


def gradient_step(ctx: EpochContext, params: Any, opt_state: Any, batch: Any,
                  key: jax.Array, index: jax.Array) -> StepOutput:
  """MMRec's step: the gradient of the loss, one update."""
  del index
  return apply_gradients(ctx, ctx.loss, params, opt_state, batch, key)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """The functions and facts that define a model for the shared trainer.

  Required:
    name: the `config.model` value.
    hparams: its frozen TrainHparams subclass: everything static the loss
      reads (`make_hparams`).
    create_model: (config, dataset) -> nnx.Module with nnx.Param leaves.
    loss: (model, data, batch, key, hp, aux=None) -> LossOutput, traced
      under jit; `aux` is what `epoch_setup` built.
    score: (model, data, hp) -> (user_emb, item_emb) for full ranking with
      the current parameters (no randomness).

  Training hooks (module docstring), each defaulting to MMRec's trainer:
    make_optimizer: hp -> optax.GradientTransformation (`adam`; e.g.
      `adam_with_l2(1e-4)`, or `optax.multi_transform` for two optimizers).
    epoch_batches: (key, data, hp) -> pytree with a leading [n_steps] axis
      (`triple_batches`; e.g. batches of user rows).
    epoch_setup: (ctx, params, opt_state, key) -> EpochStart, once per epoch
      before the steps (`no_epoch_setup`; e.g. a pruned graph as `aux`).
    train_step: (ctx, params, opt_state, batch, key, index) -> StepOutput
      (`gradient_step`; e.g. alternating updates of two parameter groups).

  Stacking (`config.sweep`, stack.py):
    sweepable: Hparams fields a stack may vary as traced values: used only
      in arithmetic, never for a shape or a Python branch. `learning_rate`
      is sweepable for all.
    gated: weights whose zero removes a term (a different program): a stack
      never mixes zero and non-zero values of those; the family tests them
      with `is_on`.

  Metadata:
    display_name: as papers print it (report tables); default `name`.
    item_features: whether item vectors read the item features (False for
      ID-only models, which cannot embed a new item: serving/cold.py).
    table_params: parameter names (a substring of the leaf's path) whose
      leading axis is users or items: split by rows over the devices with
      `config.shard_tables`.
    report_keys: the settings that tell two runs of this model apart in a
      report, besides the learning rate and reg_weight.
    config_spec: the config keys this model reads, each with its allowed
      values (`config_spec.Spec`); with the trainer's keys these are all a
      config may hold (`config_spec.validate`).
    defaults: config values beyond the Hparams defaults: keys read outside
      the Hparams (e.g. `embedding_size`), the trainer settings this model
      changes (e.g. MENTOR's learning rate), and its `grid`
      (`config_defaults`).
    dataset_defaults: {dataset name: values} the reference code uses on
      that dataset (DiffMM's README commands), applied over `defaults` by
      the dataset's config (`configs/<dataset>.py:<model>`).
  """

  name: str
  hparams: type[TrainHparams]
  create_model: Callable[..., Any]
  loss: Callable[..., LossOutput]
  score: Callable[..., tuple[jax.Array, jax.Array]]
  make_optimizer: Callable[[TrainHparams],
                           optax.GradientTransformation] = adam
  epoch_batches: Callable[..., Any] = triple_batches
  epoch_setup: Callable[..., EpochStart] = no_epoch_setup
  train_step: Callable[..., StepOutput] = gradient_step
  sweepable: frozenset[str] = frozenset()
  gated: frozenset[str] = frozenset()
  display_name: str = ''
  item_features: bool = True
  table_params: tuple[str, ...] = ()
  report_keys: tuple[str, ...] = ()
  # Not part of the jit cache key (dicts are unhashable; the functions
  # above already identify the family).
  config_spec: Mapping[str, spec_lib.Spec] = dataclasses.field(
      default_factory=dict, compare=False, hash=False)
  defaults: Mapping[str, Any] = dataclasses.field(
      default_factory=dict, compare=False, hash=False)
  dataset_defaults: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict, compare=False, hash=False)

  @property
  def title(self) -> str:
    return self.display_name or self.name

  def make_hparams(self, config: Any, **overrides) -> TrainHparams:
    """The static settings of `config` (`TrainHparams.from_config`)."""
    return self.hparams.from_config(config, **overrides)

  def config_defaults(self) -> dict[str, Any]:
    """Every config key of this model with its default value.

    The Hparams fields that are config keys (in `config_spec`) with their
    dataclass defaults, then `defaults`. A dataset config starts from
    these (configs/base.py), so no config restates them.
    """
    out = {f.name: f.default for f in dataclasses.fields(self.hparams)
           if f.name in self.config_spec}
    out.update(self.defaults)
    return out


def is_on(weight: Any) -> bool:
  """Whether a gated weight switches its term on.

  A swept weight is a traced value, non-zero by construction (a stack never
  mixes zero and non-zero values of a gated key); a static one is tested.
  """
  return isinstance(weight, jax.Array) or bool(weight)


def with_values(hp: TrainHparams, values: Mapping[str, Any]) -> TrainHparams:
  """`hp` with some fields replaced by traced values (one run of a stack).

  Not `dataclasses.replace`: `__post_init__` checks would run on tracers.
  The copy is used only inside the trace, never as a jit cache key.
  """
  out = copy.copy(hp)
  for name, value in values.items():
    object.__setattr__(out, name, value)
  return out


# TrainHparams fields that are not config keys of the same name, or that the
# trainer declares itself.
_TRAINER_FIELDS = ('batch_size', 'max_row_len', 'learning_rate',
                   'lr_decay', 'lr_decay_every', 'steps_per_epoch',
                   'spmm_kernel')


def spec_from_hparams(hparams_cls: type, **explicit: spec_lib.Spec
                      ) -> dict[str, spec_lib.Spec]:
  """A family's config spec: every Hparams field typed by its default.

  A float field takes finite numbers, an int field integers, a str field
  strings; `explicit` specs (ranges, choices, keys read outside the Hparams
  such as `embedding_size`) take precedence.
  """
  by_type = {bool: spec_lib.boolean(), int: spec_lib.integer(),
             float: spec_lib.number(), str: spec_lib.text()}
  out = {}
  for field in dataclasses.fields(hparams_cls):
    if field.name in _TRAINER_FIELDS:
      continue
    default = field.default
    if type(default) in by_type:
      out[field.name] = by_type[type(default)]
  out.update(explicit)
  return out

"""What the trainer needs from a model: the `ModelFamily` interface.

MENTOR and the baselines (MF-BPR, LightGCN, FREEDOM) share the data layer,
the compiled epoch, evaluation and checkpoints; each family supplies only
these functions. `registry.get(config.model)` returns one.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Mapping

import jax

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


def identity_epoch_setup(data: data_lib.DeviceData, key: jax.Array,
                         hp: Any) -> data_lib.DeviceData:
  del key, hp
  return data


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """The functions that define a model for the shared trainer.

  Attributes:
    name: the `config.model` value.
    create_model: (config, dataset) -> nnx.Module with nnx.Param leaves.
    make_hparams: (config, **overrides) -> a frozen TrainHparams subclass;
      everything static the loss needs.
    loss: (model, data, batch, key, hp) -> LossOutput, traced under jit.
    score: (model, data, hp) -> (user_emb, item_emb) for full ranking with
      the current parameters (no randomness).
    epoch_setup: (data, epoch_key, hp) -> data, run once per epoch inside the
      compiled epoch (e.g. FREEDOM's degree-sensitive edge pruning).
    config_spec: the config keys this model reads, each with its allowed
      values (`config_spec.Spec`); with the trainer's keys these are all a
      config may hold (`config_spec.validate`).
  """

  name: str
  create_model: Callable[..., Any]
  make_hparams: Callable[..., TrainHparams]
  loss: Callable[..., LossOutput]
  score: Callable[..., tuple[jax.Array, jax.Array]]
  epoch_setup: Callable[..., data_lib.DeviceData] = identity_epoch_setup
  # Optional, together: a model whose later steps reuse what the epoch's
  # first step built (LATTICE's item graph, MMRec's `build_item_graph`).
  # epoch_state: (model, data, hp) -> pytree, from the epoch's starting
  # parameters, without gradient; loss_after_first_step: (model, data,
  # batch, key, hp, epoch_state) -> LossOutput for steps 2..n; step 1 runs
  # `loss`.
  epoch_state: Callable[..., Any] | None = None
  loss_after_first_step: Callable[..., LossOutput] | None = None
  # Hparams fields a stack of runs may vary as traced values
  # (`config.sweep`, stack.py): the loss uses them only in arithmetic, never
  # for a shape or a Python branch. `learning_rate` is sweepable for all.
  # `gated` ones are weights whose zero removes a term (a different
  # program): a stack never mixes zero and non-zero values of those, and
  # the family tests them with `is_on`.
  sweepable: frozenset[str] = frozenset()
  gated: frozenset[str] = frozenset()
  # Not part of the jit cache key (a dict is unhashable; the functions
  # above already identify the family).
  config_spec: Mapping[str, spec_lib.Spec] = dataclasses.field(
      default_factory=dict, compare=False, hash=False)


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

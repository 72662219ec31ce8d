"""What the trainer needs from a model: the `ModelFamily` interface.

MENTOR and the baselines (MF-BPR, LightGCN, FREEDOM) share the data layer,
the compiled epoch, evaluation and checkpoints; each family supplies only
these functions. `registry.get(config.model)` returns one.
"""

from __future__ import annotations

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
  # Not part of the jit cache key (a dict is unhashable; the functions
  # above already identify the family).
  config_spec: Mapping[str, spec_lib.Spec] = dataclasses.field(
      default_factory=dict, compare=False, hash=False)


# TrainHparams fields that are not config keys of the same name, or that the
# trainer declares itself.
_TRAINER_FIELDS = ('batch_size', 'max_row_len', 'learning_rate',
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

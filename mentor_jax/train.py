"""Trains MENTOR and reports full-ranking Recall/NDCG (MENTOR_SPEC §5, §6).

  python -m mentor_jax.train --config configs/clothing.py --workdir runs/c \
      --config.mask_weight_g=1e-3

One epoch is one compiled program: the shuffle, the negative sampling and all
its optimizer steps run under `lax.scan` on the device, with no host round
trip. After each epoch the valid and test splits are ranked against all items,
and training stops early on the validation metric as MMRec does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from ml_collections import config_flags

from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import family as family_lib
from mentor_jax import metrics as metrics_lib
from mentor_jax import registry
from mentor_jax import sparse


class TrainState(NamedTuple):
  """Everything that changes during training, as one pytree."""

  params: Any  # nnx.State of the model's nnx.Param leaves
  opt_state: Any
  key: jax.Array  # raw uint32 PRNG key, advanced once per epoch
  step: jax.Array  # int32 optimizer steps taken


def create_optimizer(hp: family_lib.TrainHparams
                     ) -> optax.GradientTransformation:
  # Adam with a constant learning rate: the upstream scheduler multiplies by
  # 1.0 ** (epoch / 50), and weight decay is 0.
  return optax.adam(hp.learning_rate, b1=0.9, b2=0.999, eps=1e-8)


def init_state(model: nnx.Module, hp: family_lib.TrainHparams,
               seed: int) -> tuple[nnx.GraphDef, Any, TrainState]:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = create_optimizer(hp).init(params)
  state = TrainState(params, opt_state, jax.random.PRNGKey(seed),
                     jnp.zeros((), jnp.int32))
  return graphdef, rest, state


@functools.partial(jax.jit, static_argnames=('graphdef', 'family', 'hp'),
                   donate_argnames=('state',))
def train_epoch(state: TrainState, rest: Any, data: data_lib.DeviceData, *,
                graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                hp: family_lib.TrainHparams):
  """One epoch of training as a single compiled program.

  Returns:
    (new state, per-step loss parts {name: [n_steps]}, (user, item)
    embeddings of the last step's forward pass, which the official code
    evaluates with).
  """
  key, epoch_key = jax.random.split(state.key)
  batch_key, setup_key, steps_key = jax.random.split(epoch_key, 3)
  batches = data_lib.epoch_batches(batch_key, data, hp.batch_size,
                                   hp.max_row_len)
  data = family.epoch_setup(data, setup_key, hp)
  tx = create_optimizer(hp)

  def loss_fn(params, batch, step_key):
    model = nnx.merge(graphdef, params, rest)
    return family.loss(model, data, batch, step_key, hp)

  def one_step(carry, xs):
    params, opt_state, _ = carry
    batch, index = xs
    step_key = jax.random.fold_in(steps_key, index)
    (_, (parts, scores)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch, step_key)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, scores), parts

  n_steps = batches.users.shape[0]
  # The carry needs the embeddings' shapes before the first step runs.
  shapes = jax.eval_shape(lambda: loss_fn(state.params, jax.tree.map(
      lambda x: x[0], batches), steps_key)[1][1])
  empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (params, opt_state, scores), parts = jax.lax.scan(
      one_step, (state.params, state.opt_state, empty),
      (batches, jnp.arange(n_steps)))
  new_state = TrainState(params, opt_state, key, state.step + n_steps)
  return new_state, parts, scores


@functools.partial(jax.jit, static_argnames=('graphdef', 'family', 'hp'))
def clean_scores(params: Any, rest: Any, data: data_lib.DeviceData, *,
                 graphdef: nnx.GraphDef, family: family_lib.ModelFamily,
                 hp: family_lib.TrainHparams):
  """(user, item) embeddings with the current parameters."""
  model = nnx.merge(graphdef, params, rest)
  return family.score(model, data, hp)


class Evaluator:
  """Full-ranking Recall/NDCG on the valid and test splits."""

  def __init__(self, dataset: data_lib.Dataset, config):
    self._train = dataset.split('train')
    self._splits = {s: dataset.split(s) for s in ('valid', 'test')}
    self._ks = tuple(config.topk)
    self._chunk = int(config.eval_batch_size)

  def __call__(self, user_emb, item_emb) -> dict[str, dict[str, float]]:
    out = {}
    for name, (indptr, items) in self._splits.items():
      out[name] = metrics_lib.evaluate_embeddings(
          user_emb, item_emb, indptr, items, *self._train, ks=self._ks,
          chunk_size=self._chunk)
    return out


class EarlyStopping:
  """MMRec's rule: stop after more than `patience` epochs without a strict
  improvement of the (rounded) validation metric."""

  def __init__(self, patience: int, best: float = -1.0, bad_epochs: int = 0):
    self.patience = patience
    self.best = best
    self.bad_epochs = bad_epochs

  def update(self, value: float) -> tuple[bool, bool]:
    """Returns (improved, stop)."""
    if value > self.best:
      self.best, self.bad_epochs = value, 0
      return True, False
    self.bad_epochs += 1
    return False, self.bad_epochs > self.patience


class MetricWriter:
  """Appends one JSON object per line to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: pathlib.Path):
    self._path = workdir / 'metrics.jsonl'

  def write(self, record: dict[str, Any]) -> None:
    with self._path.open('a') as f:
      f.write(json.dumps(record) + '\n')


def resolve_kernel(name: str) -> str:
  return sparse.pick_default_kernel() if name == 'auto' else name


def format_metrics(m: dict[str, float], ks=(10, 20)) -> str:
  return ' '.join(f'R@{k}={m[f"recall@{k}"]:.4f} N@{k}={m[f"ndcg@{k}"]:.4f}'
                  for k in ks)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains with early stopping; returns the best epoch's metrics.

  Returns:
    {'best_epoch', 'valid', 'test', 'epochs_run'}: valid and test metrics
    at the epoch with the best validation metric.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  dataset = datasets.load_for_config(config)
  if config.valid_metric not in {f'{m}@{k}' for m in ('recall', 'ndcg')
                                 for k in config.topk}:
    raise ValueError(f'config.valid_metric={config.valid_metric!r}: expected '
                     f'recall@K or ndcg@K with K in {tuple(config.topk)}')
  family = registry.get(config.model)
  hp = family.make_hparams(
      config, spmm_kernel=resolve_kernel(config.spmm_kernel),
      max_row_len=data_lib.max_row_length(dataset.split('train')[0]))
  data = data_lib.to_device(dataset, config.knn_k)
  model = family.create_model(config, dataset)
  graphdef, rest, state = init_state(model, hp, config.seed)
  del model
  evaluator = Evaluator(dataset, config)
  writer = MetricWriter(workdir)
  stopper = EarlyStopping(config.stopping_step)
  n_steps = data_lib.steps_per_epoch(dataset.n_train, hp.batch_size)
  logging.info('%s: %d users, %d items, %d training rows, %d steps/epoch, '
               'kernel=%s', dataset.path, dataset.n_users, dataset.n_items,
               dataset.n_train, n_steps, hp.spmm_kernel)

  best = {'best_epoch': -1, 'valid': {}, 'test': {}}
  epoch_times = []
  epoch = 0
  for epoch in range(config.epochs):
    t0 = time.perf_counter()
    state, parts, scores = train_epoch(state, rest, data, graphdef=graphdef,
                                       family=family, hp=hp)
    parts = jax.device_get(parts)
    train_time = time.perf_counter() - t0
    losses = {k: float(np.mean(v)) for k, v in parts.items()}
    if not all(np.all(np.isfinite(v)) for v in parts.values()):
      bad = next(k for k, v in parts.items() if not np.all(np.isfinite(v)))
      raise FloatingPointError(
          f'epoch {epoch}: loss part {bad!r} became NaN or inf; training '
          'stopped (the official trainer stops on a NaN loss as well).')
    if config.eval_embeddings == 'recompute':
      scores = clean_scores(state.params, rest, data, graphdef=graphdef,
                            family=family, hp=hp)
    t1 = time.perf_counter()
    result = evaluator(*scores)
    eval_time = time.perf_counter() - t1
    epoch_times.append(train_time)
    # MMRec rounds metrics to 4 decimals before comparing them.
    value = round(result['valid'][config.valid_metric], 4)
    improved, stop = stopper.update(value)
    if improved:
      best = {'best_epoch': epoch, 'valid': result['valid'],
              'test': result['test']}
    steps_per_s = n_steps / train_time
    eta = np.median(epoch_times) * (config.epochs - epoch - 1)
    writer.write({'epoch': epoch, 'step': int(state.step), 'loss': losses,
                  'train_time_s': train_time, 'eval_time_s': eval_time,
                  'valid': result['valid'], 'test': result['test'],
                  'best_epoch': best['best_epoch']})
    if epoch % config.log_every_epochs == 0 or improved or stop:
      logging.info(
          'epoch %d  loss %.4f (%s)  %.2fs (%.1f steps/s, eval %.2fs, '
          'ETA <= %.0fs)  valid %s  test %s%s', epoch,
          sum(losses.values()),
          ' '.join(f'{k}={v:.4g}' for k, v in losses.items()), train_time,
          steps_per_s, eval_time, eta, format_metrics(result['valid']),
          format_metrics(result['test']), '  *' if improved else '')
    if stop:
      logging.info('early stop: no improvement of valid %s for %d epochs',
                   config.valid_metric, stopper.bad_epochs)
      break
  best['epochs_run'] = epoch + 1
  logging.info('best epoch %d: valid %s | test %s', best['best_epoch'],
               format_metrics(best['valid']), format_metrics(best['test']))
  (workdir / 'result.json').write_text(json.dumps(best, indent=2))
  return best


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for logs and checkpoints.')


def main(argv):
  del argv
  config = FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. configs/small.py')
  workdir = FLAGS.workdir or f'runs/{config.dataset}'
  train_and_evaluate(config, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)

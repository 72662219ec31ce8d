"""What changes from step to step inside the compiled epoch.

* LATTICE's item graph: built with gradient in an epoch's first step and
  reused, detached, in the others (MMRec's `build_item_graph`);
* MMRec's learning-rate schedule, lr * factor ** (epoch / every).

Each is checked against a step-by-step reference written with plain jax and
optax calls, one step at a time, on the epoch's own batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import conftest
from mentor_jax import data as data_lib
from mentor_jax import epoch as epoch_lib
from mentor_jax.models import lattice


def _epoch_batches(state: epoch_lib.TrainState, data, hp):
  """The batches an epoch draws from `state.key`, and the steps' key."""
  _, epoch_key = jax.random.split(state.key)
  batch_key, _, steps_key = jax.random.split(epoch_key, 3)
  batches = data_lib.epoch_batches(batch_key, data, hp.batch_size,
                                   hp.max_row_len)
  return batches, steps_key


def _run_trainer_epochs(built, n_epochs: int):
  graphdef, rest, state = epoch_lib.init_state(
      built.model, built.family, built.hp, built.config.seed)
  start = jax.tree.map(jnp.copy, state)  # An epoch donates its input.
  for _ in range(n_epochs):
    state, _, _ = epoch_lib.train_epoch(state, rest, built.data,
                                        graphdef=graphdef,
                                        family=built.family, hp=built.hp)
  return graphdef, rest, start, state


def _close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                               rtol=1e-5)


def _lattice_reference_epoch(graphdef, rest, state, built, *, rebuild_always):
  """One LATTICE epoch step by step: the graph of the epoch's start.

  With `rebuild_always`, every step rebuilds the graph with gradient (what
  the trainer did before the hook): the contrast that shows the test can
  tell the two schedules apart.
  """
  hp, data = built.hp, built.data
  batches, _ = _epoch_batches(state, data, hp)
  tx = optax.adam(hp.learning_rate)
  params, opt_state = state.params, tx.init(state.params)
  start_graph = jax.lax.stop_gradient(
      lattice.epoch_graph(nnx.merge(graphdef, params, rest), hp))

  def loss(params, batch, first):
    model = nnx.merge(graphdef, params, rest)
    if first or rebuild_always:
      graph, value_grad = lattice.epoch_graph(model, hp), True
    else:
      graph, value_grad = start_graph, False
    return lattice.loss_with_graph(model, data, batch, hp, graph,
                                   value_grad=value_grad)[0]

  for step in range(batches.users.shape[0]):
    batch = jax.tree.map(lambda x, s=step: x[s], batches)
    grads = jax.grad(loss)(params, batch, step == 0)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_lattice_builds_its_graph_once_per_epoch(tiny_dataset):
  built = conftest.build_baseline('lattice', tiny_dataset, knn_k=5,
                                  train_batch_size=64, learning_rate=1e-2,
                                  learning_rate_scheduler=(1.0, 50))
  assert built.hp.steps_per_epoch > 2  # several steps reuse the graph
  graphdef, rest, start, trained = _run_trainer_epochs(built, 1)
  expected = _lattice_reference_epoch(graphdef, rest, start, built,
                                      rebuild_always=False)
  # Float32 rounding in the first step's gradient, which Adam's first
  # update (g / |g|) amplifies on near-zero entries: at most 6e-6 seen.
  _close(trained.params, expected, atol=1e-5)
  # The projections get gradient only in the first step; rebuilding the
  # graph in every step gives them more and ends elsewhere (by 4e-3 to
  # 6e-2 per table here).
  other = _lattice_reference_epoch(graphdef, rest, start, built,
                                   rebuild_always=True)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(trained.params), jax.tree.leaves(other)))
  assert diff > 1e-3, diff


@pytest.mark.parametrize('factor, every', [(0.5, 1), (0.96, 50)])
def test_learning_rate_schedule_is_mmrec_lambda_lr(tiny_dataset, factor,
                                                   every):
  """Epoch e steps with lr * factor ** (e / every), from the Adam state."""
  built = conftest.build_baseline('mfbpr', tiny_dataset, train_batch_size=64,
                                  learning_rate=1e-2,
                                  learning_rate_scheduler=(factor, every))
  hp = built.hp
  graphdef, rest, start, trained = _run_trainer_epochs(built, 3)

  # Reference: Adam's direction (optax.scale_by_adam) times -lr_e by hand.
  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
  params, adam_state, state = start.params, adam.init(start.params), start

  def loss(params, batch, key):
    return built.family.loss(nnx.merge(graphdef, params, rest), built.data,
                             batch, key, hp)[0]

  for epoch in range(3):
    lr = hp.learning_rate * factor ** (epoch / every)
    batches, steps_key = _epoch_batches(state, built.data, hp)
    for step in range(batches.users.shape[0]):
      batch = jax.tree.map(lambda x, s=step: x[s], batches)
      grads = jax.grad(loss)(params, batch,
                             jax.random.fold_in(steps_key, step))
      direction, adam_state = adam.update(grads, adam_state, params)
      params = jax.tree.map(lambda p, d, lr=lr: p - lr * d, params,
                            direction)
    state = state._replace(key=jax.random.split(state.key)[0])
  _close(trained.params, params, atol=1e-6)
  assert int(trained.step) == 3 * hp.steps_per_epoch


def test_constant_rate_keeps_plain_adam_state(tiny_dataset):
  """factor 1 is optax's plain Adam: checkpoints of such runs still load."""
  built = conftest.build_baseline('mfbpr', tiny_dataset)
  params = nnx.state(built.model, nnx.Param)
  plain = optax.adam(built.hp.learning_rate).init(params)
  ours = built.family.make_optimizer(built.hp).init(params)
  assert jax.tree.structure(plain) == jax.tree.structure(ours)

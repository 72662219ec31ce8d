"""The `ModelFamily` training hooks, against references written by hand.

* `mmrec_schedule`: MMRec's LambdaLR factor ** (epoch / every), and
  optax's exponential decay (the same rate up to float rounding);
* `adam_with_l2`: torch's Adam(weight_decay=w), in numpy float64;
* a toy family that uses every hook the way the next systems will: its own
  sampler (one row per user, `epoch_batches`), a phase that trains part of
  the model before the steps and builds a per-epoch pytree (`epoch_setup`,
  as DiffMM and DualGNN), and a step with two optimizers that update their
  parameter groups in turns, one through a gradient penalty of a nested
  `grad` (`make_optimizer`, `train_step`, as MMSSL). One epoch of the
  trainer equals the same epoch orchestrated by hand from the documented
  contract (family.py's module docstring), and the toy stacks and resumes
  exactly as the registered families do (test_families.py).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import tiny
from mentor_jax import config_spec as spec
from mentor_jax import data as data_lib
from mentor_jax import epoch as epoch_lib
from mentor_jax import family
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import train
from mentor_jax.ops import losses


# --- the optimizers ----------------------------------------------------------


def _hp(**kw) -> family.TrainHparams:
  return family.TrainHparams(**kw)


def test_mmrec_schedule_is_mmrecs_lambda_lr():
  hp = _hp(learning_rate=1e-3, lr_decay=0.96, lr_decay_every=50.0,
           steps_per_epoch=7)
  schedule = family.mmrec_schedule(hp)
  counts = np.arange(0, 300 * 7, 5)
  got = np.asarray(jax.vmap(schedule)(jnp.asarray(counts, jnp.int32)))
  # torch.optim.lr_scheduler.LambdaLR(lambda e: 0.96 ** (e / 50)), stepped
  # once per epoch: the epoch of step `count` is count // steps_per_epoch.
  want = 1e-3 * 0.96 ** ((counts // 7) / 50.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  lib = optax.exponential_decay(1e-3, transition_steps=7,
                                decay_rate=0.96 ** (1 / 50), staircase=True)
  np.testing.assert_allclose(got, np.asarray(jax.vmap(lib)(counts)),
                             rtol=1e-6)
  assert family.mmrec_schedule(_hp(learning_rate=1e-3)) == 1e-3


def _torch_adam_l2(params, grads, lr, wd, steps, b1=0.9, b2=0.999,
                   eps=1e-8):
  """torch.optim.Adam(weight_decay=wd) in float64 (its documented update)."""
  p = np.asarray(params, np.float64)
  m, v = np.zeros_like(p), np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64) + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return p


def test_adam_with_l2_is_torch_adam_with_weight_decay():
  rng = np.random.default_rng(0)
  params = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
  tx = family.adam_with_l2(0.1)(_hp(learning_rate=1e-2))
  p, state = jnp.asarray(params), None
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(
      np.asarray(p), _torch_adam_l2(params, grads, 1e-2, 0.1, 4), rtol=1e-5,
      atol=1e-6)
  # Coupled L2 is not AdamW's decoupled decay: the two differ.
  adamw = optax.adamw(1e-2, weight_decay=0.1, eps=1e-8)
  q, s = jnp.asarray(params), adamw.init(jnp.asarray(params))
  for g in grads:
    u, s = adamw.update(jnp.asarray(g), s, q)
    q = optax.apply_updates(q, u)
  assert not np.allclose(np.asarray(q), np.asarray(p), atol=1e-5)


# --- a toy family that uses every hook ---------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyHparams(family.TrainHparams):
  gp_weight: float = 0.5
  adv_weight: float = 0.1
  critic_lr: float = 1e-2
  phase_steps: int = 2
  spmm_kernel: str = 'csr'


class Toy(nnx.Module):

  def __init__(self, n_users, n_items, dim, *, rngs):
    self.user_emb = nnx.Param(0.1 * jax.random.normal(rngs.params(),
                                                      (n_users, dim)))
    self.item_emb = nnx.Param(0.1 * jax.random.normal(rngs.params(),
                                                      (n_items, dim)))
    self.critic_w = nnx.Param(0.1 * jax.random.normal(rngs.params(),
                                                      (dim,)))


def toy_create(config, dataset):
  return Toy(dataset.n_users, dataset.n_items, config.embedding_size,
             rngs=nnx.Rngs(params=config.seed))


def _is_critic(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'critic_w' in jax.tree_util.keystr(path), params)


def _groups(hp):
  """The two optimizers, each over its own parameter group."""
  critic = optax.masked(optax.adam(hp.critic_lr, b1=0.5, b2=0.9), _is_critic)
  gen = optax.masked(optax.adamw(hp.learning_rate, weight_decay=0.01),
                     lambda p: jax.tree.map(lambda c: not c, _is_critic(p)))
  return {'critic': critic, 'gen': gen}


def toy_optimizer(hp):
  """One state per group; the step applies each in turn (`_apply`)."""
  groups = _groups(hp)

  def init(params):
    return {name: tx.init(params) for name, tx in groups.items()}

  def update(grads, state, params=None):
    del grads, state, params
    raise NotImplementedError('toy_step applies each optimizer itself')
  return optax.GradientTransformation(init, update)


def _apply(hp, name, grads, opt_state, params):
  tx = _groups(hp)[name]
  updates, inner = tx.update(grads, opt_state[name], params)
  mine = _is_critic(params)
  # optax.masked passes the other group's gradients through: not ours.
  updates = jax.tree.map(lambda u, c: u if c == (name == 'critic') else
                         jnp.zeros_like(u), updates, mine)
  return optax.apply_updates(params, updates), {**opt_state, name: inner}


def toy_batches(key, data, hp):
  """One row per user, users shuffled: its positive drawn from its
  training items, one negative."""
  n_users = data.train_indptr.shape[0] - 1
  perm_key, pos_key, neg_key = jax.random.split(key, 3)
  users = jax.random.permutation(perm_key, n_users)
  start = data.train_indptr[users]
  degree = data.train_indptr[users + 1] - start
  offset = jax.random.randint(pos_key, users.shape, 0, 1 << 30) % degree
  pos = data.train_items[start + offset]
  neg = data_lib.sample_negatives(neg_key, users, data, hp.max_row_len)
  n_steps = -(-n_users // hp.batch_size)
  pad = n_steps * hp.batch_size - n_users
  mask = jnp.concatenate([jnp.ones(n_users), jnp.zeros(pad)])
  fill = lambda x: jnp.concatenate([x, jnp.zeros(pad, x.dtype)]).reshape(
      n_steps, hp.batch_size)
  return data_lib.Batches(fill(users), fill(pos), fill(neg),
                          mask.reshape(n_steps, hp.batch_size))


def toy_setup(ctx, params, opt_state, key):
  """A phase before the steps (plain SGD on the critic) and a per-epoch
  user mask as `aux` on even epochs (all users on odd ones); the epoch's
  index is logged as a part."""
  phase_key, mask_key = jax.random.split(key)

  def phase_loss(p, k):
    w = ctx.model(p).critic_w[...]
    target = jax.random.normal(k, w.shape)
    return jnp.mean((w - target) ** 2)

  def one(p, i):
    value, g = jax.value_and_grad(phase_loss)(p, jax.random.fold_in(
        phase_key, i))
    g = jax.tree.map(lambda x, c: x if c else jnp.zeros_like(x), g,
                     _is_critic(p))
    return jax.tree.map(lambda x, d: x - 0.1 * d, p, g), value

  params, values = jax.lax.scan(one, params, jnp.arange(ctx.hp.phase_steps))
  n_users = ctx.data.train_indptr.shape[0] - 1
  aux = jnp.where(ctx.epoch % 2 == 0, jax.random.bernoulli(
      mask_key, 0.5, (n_users,)).astype(jnp.float32), 1.0)
  return family.EpochStart(params, opt_state, aux=aux, parts={
      'phase': values, 'epoch': jnp.full(values.shape, ctx.epoch, float)})


def _critic_loss(model, batch, key, hp):
  real = model.user_emb[...][batch.users]
  fake = model.item_emb[...][batch.pos_items]
  w = model.critic_w[...]
  score = lambda x: jnp.tanh(x @ w)
  eps = jax.random.uniform(key, (real.shape[0], 1))
  mix = eps * real + (1 - eps) * fake
  # WGAN-GP: the critic's gradient at the mixed points, through a nested
  # grad (its own gradient flows through this one).
  slopes = jax.vmap(jax.grad(score))(mix)
  penalty = jnp.sum(batch.mask * (jnp.linalg.norm(slopes, axis=-1) - 1) ** 2
                    ) / jnp.sum(batch.mask)
  m = batch.mask / jnp.sum(batch.mask)
  return (jnp.sum(m * score(fake)) - jnp.sum(m * score(real))
          + hp.gp_weight * penalty)


def toy_loss(model, data, batch, key, hp, aux=None):
  """The generator's loss: BPR + the critic's judgement of the items, users
  weighted by this epoch's mask `aux`."""
  del data, key
  users, items = model.user_emb[...], model.item_emb[...]
  weight = batch.mask * (1.0 if aux is None else aux[batch.users])
  u = users[batch.users]
  pos = jnp.sum(u * items[batch.pos_items], -1)
  neg = jnp.sum(u * items[batch.neg_items], -1)
  fake = jnp.tanh(items[batch.pos_items] @ model.critic_w[...])
  parts = {'bpr': losses.bpr_loss(pos, neg, weight, log_base=math.e),
           'adv': -hp.adv_weight * jnp.sum(weight * fake) / jnp.maximum(
               jnp.sum(weight), 1.0)}
  return sum(parts.values()), (parts, (users, items))


def toy_step(ctx, params, opt_state, batch, key, index):
  """The critic first (its optimizer), then the generator (its own)."""
  del index
  critic_key, _ = jax.random.split(key)
  critic, grads = jax.value_and_grad(
      lambda p: _critic_loss(ctx.model(p), batch, critic_key, ctx.hp))(params)
  params, opt_state = _apply(ctx.hp, 'critic', grads, opt_state, params)
  (_, (parts, scores)), grads = jax.value_and_grad(
      ctx.loss, has_aux=True)(params, batch, key)
  params, opt_state = _apply(ctx.hp, 'gen', grads, opt_state, params)
  return family.StepOutput(params, opt_state, {'critic': critic, **parts},
                           scores)


def toy_score(model, data, hp):
  del data, hp
  return model.user_emb[...], model.item_emb[...]


TOY = family.ModelFamily(
    name='toy', hparams=ToyHparams, create_model=toy_create, loss=toy_loss,
    score=toy_score, make_optimizer=toy_optimizer, epoch_batches=toy_batches,
    epoch_setup=toy_setup, train_step=toy_step,
    sweepable=frozenset({'gp_weight', 'adv_weight'}),
    table_params=('user_emb', 'item_emb'),
    defaults={'embedding_size': 8},
    config_spec=family.spec_from_hparams(
        ToyHparams, embedding_size=spec.integer(1)))


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setattr(registry, 'FAMILIES', registry.FAMILIES + (TOY,))
  return TOY


def _toy_config(npz, **overrides):
  config = tiny.get_config('toy')
  config.data_npz = str(npz)
  config.train_batch_size = 16  # 60 users: 4 steps
  config.learning_rate = 1e-2
  config.epochs = 2
  for key, value in overrides.items():
    config[key] = value
  return config


def _by_hand(state, rest, data, graphdef, hp):
  """One epoch orchestrated from family.py's contract, step by step."""
  key, epoch_key = jax.random.split(state.key)
  batch_key, setup_key, steps_key = jax.random.split(epoch_key, 3)
  batches = toy_batches(batch_key, data, hp)
  ctx = family.EpochContext(TOY, graphdef, rest, data, hp,
                            toy_optimizer(hp), epoch=state.step // 4)
  start = toy_setup(ctx, state.params, state.opt_state, setup_key)
  ctx = ctx._replace(aux=start.aux)
  params, opt_state, parts = start.params, start.opt_state, []
  for i in range(batches.users.shape[0]):
    batch = jax.tree.map(lambda x, i=i: x[i], batches)
    out = toy_step(ctx, params, opt_state, batch,
                   jax.random.fold_in(steps_key, i), i)
    params, opt_state = out.params, out.opt_state
    parts.append(out.parts)
  return params, opt_state, start.parts, parts


def test_toy_epoch_equals_the_contract_by_hand(toy, tiny_dataset):
  config = _toy_config(tiny_dataset)
  dataset = data_lib.load_dataset(tiny_dataset)
  built = epoch_lib.setup(config, dataset)
  hand = jax.jit(lambda s: _by_hand(s, built.rest, built.data,
                                    built.graphdef, built.hp))(built.state)
  state, parts, _ = epoch_lib.train_epoch(
      jax.tree.map(jnp.copy, built.state), built.rest, built.data,
      graphdef=built.graphdef, family=toy, hp=built.hp)
  params, opt_state, setup_parts, step_parts = hand
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((params, opt_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)
  assert set(parts) == {'phase', 'epoch', 'critic', 'bpr', 'adv'}
  np.testing.assert_allclose(parts['phase'], setup_parts['phase'], rtol=1e-5)
  np.testing.assert_allclose(parts['critic'],
                             [p['critic'] for p in step_parts], rtol=1e-5)
  assert parts['phase'].shape == (2,) and parts['bpr'].shape == (4,)
  assert int(state.step) == 4
  # The critic moved, with its own optimizer (count) and the phase's SGD.
  assert int(state.opt_state['critic'].inner_state[0].count) == 4


def test_toy_trains_stacks_and_resumes(toy, tiny_dataset, tmp_path):
  stacked = train.train_and_evaluate(_toy_config(tiny_dataset, seeds=(3, 5)),
                                     tmp_path / 'stack')
  for k, seed in enumerate((3, 5)):
    workdir = tmp_path / f'seed{seed}'
    if seed == 3:  # Stopped after one epoch, then resumed.
      train.train_and_evaluate(_toy_config(tiny_dataset, seed=3, epochs=1),
                               workdir)
    alone = train.train_and_evaluate(_toy_config(tiny_dataset, seed=seed),
                                     workdir)
    assert alone['test'] == pytest.approx(stacked['runs'][k]['test'],
                                          abs=1e-9)
    a = rundirs.read_metrics(tmp_path / 'stack' / 'runs' / str(k))
    b = rundirs.read_metrics(workdir)
    assert [r['epoch'] for r in a] == [r['epoch'] for r in b] == [0, 1]
    for x, y in zip(a, b):
      assert set(x['loss']) == {'phase', 'epoch', 'critic', 'bpr', 'adv'}
      # The epoch index counts on across the resume (the masks alternate).
      assert x['loss']['epoch'] == y['loss']['epoch'] == x['epoch']
      for name, value in x['loss'].items():
        assert math.isfinite(value)
        assert value == pytest.approx(y['loss'][name], rel=1e-4, abs=1e-7)

"""The training sampler: shuffling, batching and negative sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mentor_jax import data as data_lib
from mentor_jax.ops import sparse


def _csr(users, items, n_users):
  order = np.lexsort((items, users))
  indptr = np.zeros(n_users + 1, np.int32)
  np.add.at(indptr, users + 1, 1)
  return np.cumsum(indptr).astype(np.int32), items[order].astype(np.int32)


def _device_data(users, items, n_users, n_items):
  """A DeviceData with only the sampler's fields meaningful."""
  indptr, sorted_items = _csr(users, items, n_users)
  empty = sparse.csr_from_numpy(np.zeros(2, np.int32), np.zeros(0, np.int32),
                                np.zeros(0, np.float32))
  return data_lib.DeviceData(
      feat_v=jnp.zeros((n_items, 1)), feat_t=jnp.zeros((n_items, 1)),
      adj=empty, knn_v=jnp.zeros((n_items, 1), jnp.int32),
      knn_t=jnp.zeros((n_items, 1), jnp.int32),
      train_user=jnp.asarray(users, jnp.int32),
      train_item=jnp.asarray(items, jnp.int32),
      train_indptr=jnp.asarray(indptr), train_items=jnp.asarray(sorted_items),
      neg_items=jnp.asarray(np.unique(items).astype(np.int32)))


def _random_interactions(rng, n_users, n_items, n_rows):
  users = rng.integers(0, n_users, n_rows)
  items = rng.integers(0, n_items, n_rows)
  return users.astype(np.int32), items.astype(np.int32)


def test_contains_sorted_matches_numpy():
  rng = np.random.default_rng(0)
  users, items = _random_interactions(rng, 30, 50, 400)
  indptr, sorted_items = _csr(users, items, 30)
  q_users = rng.integers(0, 30, 2000).astype(np.int32)
  q_items = rng.integers(0, 50, 2000).astype(np.int32)
  got = data_lib.contains_sorted(
      jnp.asarray(indptr), jnp.asarray(sorted_items), jnp.asarray(q_users),
      jnp.asarray(q_items), data_lib.max_row_length(indptr))
  truth = {(u, i) for u, i in zip(users, items)}
  want = np.array([(u, i) in truth for u, i in zip(q_users, q_items)])
  np.testing.assert_array_equal(np.asarray(got), want)
  assert want.any() and not want.all()


def test_negatives_are_never_training_positives():
  rng = np.random.default_rng(1)
  # Dense users (most items are positives) force many redraws.
  users, items = _random_interactions(rng, 20, 40, 600)
  data = _device_data(users, items, 20, 40)
  q = jnp.asarray(np.repeat(np.arange(20, dtype=np.int32), 200))
  neg = np.asarray(data_lib.sample_negatives(
      jax.random.PRNGKey(3), q, data,
      data_lib.max_row_length(np.asarray(data.train_indptr))))
  positives = {(u, i) for u, i in zip(users, items)}
  assert not any((u, i) in positives for u, i in zip(np.asarray(q), neg))
  assert np.isin(neg, np.unique(items)).all()


def _user_zero_negative_counts(all_items: bool) -> np.ndarray:
  """Counts of 30,000 negatives of user 0 over 30 items. User 0 owns items
  0..9, user 1 items 10..24; items 25..29 never occur in train."""
  users = np.array([0] * 10 + [1] * 15, np.int32)
  items = np.array(list(range(10)) + list(range(10, 25)), np.int32)
  data = _device_data(users, items, 2, 30)
  q = jnp.zeros(30000, jnp.int32)
  neg = np.asarray(data_lib.sample_negatives(jax.random.PRNGKey(0), q, data,
                                             15, all_items=all_items))
  return np.bincount(neg, minlength=30)


def test_negatives_are_uniform_over_allowed_items():
  # MMRec's rule: items 25..29 never occur in train, so they may never be
  # drawn. Allowed for user 0: items 10..24 (15 items).
  counts = _user_zero_negative_counts(all_items=False)
  assert counts[:10].sum() == 0 and counts[25:].sum() == 0
  _, p_value = stats.chisquare(counts[10:25])
  assert p_value > 1e-3, counts


def test_epoch_batches_cover_every_row_once():
  rng = np.random.default_rng(3)
  users, items = _random_interactions(rng, 25, 60, 333)
  data = _device_data(users, items, 25, 60)
  b = data_lib.epoch_batches(jax.random.PRNGKey(0), data, 64,
                             data_lib.max_row_length(
                                 np.asarray(data.train_indptr)))
  assert b.users.shape == (6, 64)
  mask = np.asarray(b.mask).ravel().astype(bool)
  assert mask.sum() == 333 and mask[:333].all()
  got = sorted(zip(np.asarray(b.users).ravel()[mask],
                   np.asarray(b.pos_items).ravel()[mask]))
  assert got == sorted(zip(users, items))
  # A different key gives a different order (the shuffle is real).
  b2 = data_lib.epoch_batches(jax.random.PRNGKey(1), data, 64, 60)
  assert not np.array_equal(np.asarray(b.users), np.asarray(b2.users))


def test_epoch_batches_are_deterministic():
  rng = np.random.default_rng(4)
  users, items = _random_interactions(rng, 25, 60, 200)
  data = _device_data(users, items, 25, 60)
  run = lambda: data_lib.epoch_batches(jax.random.PRNGKey(7), data, 32, 60)
  for x, y in zip(run(), run()):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_knn_k_larger_than_stored_is_rejected(tiny_dataset):
  with pytest.raises(ValueError, match='knn_k'):
    data_lib.to_device(data_lib.load_dataset(tiny_dataset), knn_k=10_000)


def test_user_with_every_item_is_rejected():
  # User 1 has seen both items that occur in train: no negative exists.
  indptr = np.array([0, 1, 4], np.int32)
  items = np.array([0, 0, 1, 1], np.int32)
  with pytest.raises(ValueError, match='user 1'):
    data_lib.check_negatives_exist(indptr, items, 2, 'x.npz')
  data_lib.check_negatives_exist(indptr, items, 3, 'x.npz')  # One unseen.
  data_lib.check_negatives_exist(np.array([0, 0, 0]), np.zeros(0, np.int32),
                                 1)  # Users without rows are fine,
  data_lib.check_negatives_exist(np.array([0, 2, 2]), np.array([0, 1]),
                                 3)  # also after the last non-empty row.


def test_all_items_negatives_include_items_never_in_train():
  # From every item id (DiffMM's sampler): items 25..29, never in train,
  # are drawn too; user 0's own items 0..9 still never.
  counts = _user_zero_negative_counts(all_items=True)
  assert counts[:10].sum() == 0 and (counts[10:] > 0).all()
  _, p_value = stats.chisquare(counts[10:])
  assert p_value > 1e-3, counts

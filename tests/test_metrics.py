"""Tests for mentor_jax.metrics against a brute-force numpy ranking."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mentor_jax import metrics
from mentor_jax import ranking

KS = (1, 3, 5, 10)


def to_csr(lists):
  """Per-user item lists -> (indptr int32 [U+1], items int32), sorted."""
  indptr = np.zeros(len(lists) + 1, np.int32)
  indptr[1:] = np.cumsum([len(x) for x in lists])
  items = np.concatenate([np.sort(np.asarray(x, np.int64)) for x in lists]
                         + [np.zeros(0, np.int64)]).astype(np.int32)
  return indptr, items


def brute_force(user_emb, item_emb, gt_lists, train_lists, ks):
  """Independent per-user reference: a Python loop and a stable sort."""
  ue = np.asarray(user_emb, np.float64)
  ie = np.asarray(item_emb, np.float64)
  n_items = ie.shape[0]
  per_user = {f'{m}@{k}': [] for k in ks
              for m in ('recall', 'ndcg', 'precision', 'map', 'hit', 'mrr')}
  users, tops = [], []
  for u, gt in enumerate(gt_lists):
    if len(gt) == 0:
      continue
    users.append(u)
    s = ue[u] @ ie.T
    s[np.asarray(train_lists[u], np.int64)] = -np.inf
    # Descending score, ties by lower item id (lexsort: last key primary).
    order = np.lexsort((np.arange(n_items), -s))
    tops.append(order)
    gt_set = set(int(i) for i in gt)
    for k in ks:
      top = order[:k]
      h = np.array([int(i) in gt_set for i in top], np.float64)
      dcg = sum(h[r] / math.log2(r + 2) for r in range(len(h)))
      idcg = sum(1 / math.log2(r + 2) for r in range(min(len(gt), k)))
      per_user[f'recall@{k}'].append(h.sum() / len(gt))
      per_user[f'ndcg@{k}'].append(dcg / idcg)
      per_user[f'precision@{k}'].append(h.sum() / k)
      # MMRec's map_: precision at each hit's rank, over min(|G|, K).
      ap = sum(h[:r + 1].sum() / (r + 1) for r in range(len(h)) if h[r])
      per_user[f'map@{k}'].append(ap / min(len(gt), k))
      per_user[f'hit@{k}'].append(float(h.any()))
      first = next((r + 1 for r in range(len(h)) if h[r]), None)
      per_user[f'mrr@{k}'].append(1 / first if first else 0.0)
  means = {key: float(np.mean(v)) for key, v in per_user.items()}
  return users, tops, per_user, means


def random_case(seed, n_users=57, n_items=40, dim=4):
  r = np.random.default_rng(seed)
  # Small integers: float32 scores are exact and many of them tie.
  ue = r.integers(-2, 3, size=(n_users, dim)).astype(np.float32)
  ie = r.integers(-2, 3, size=(n_items, dim)).astype(np.float32)
  gt_lists, train_lists = [], []
  for u in range(n_users):
    n_gt = 0 if u % 9 == 4 else int(r.integers(1, 16))  # Some users empty.
    # Drawn with replacement: duplicate ground-truth rows happen.
    gt_lists.append(r.integers(0, n_items, size=n_gt))
    n_train = min(n_items, int(r.integers(0, 12)))
    train_lists.append(r.choice(n_items, size=n_train, replace=False))
  return ue, ie, gt_lists, train_lists


def run(ue, ie, gt_lists, train_lists, ks=KS, chunk_size=16):
  gi, gitems = to_csr(gt_lists)
  ti, titems = to_csr(train_lists)
  return metrics.evaluate_embeddings(
      jnp.asarray(ue), jnp.asarray(ie), gi, gitems, ti, titems, ks=ks,
      chunk_size=chunk_size)


def assert_metrics_close(got, ref):
  assert set(got) == set(ref)
  for key in ref:
    assert isinstance(got[key], float)
    np.testing.assert_allclose(got[key], ref[key], rtol=1e-12, atol=1e-12,
                               err_msg=key)


def test_hand_made_case():
  # 2 dims, 6 items. Item scores for user 0 (= e_0): [5, 4, 3, 2, 1, 0].
  item_emb = np.array([[5, 0], [4, 1], [3, 0], [2, 9], [1, 0], [0, 0]],
                      np.float32)
  user_emb = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
  # User 0: train {0}, so ranking is 1, 2, 3, 4, 5. Ground truth {2, 5}.
  #   hits at ranks 2 (item 2) and 5 (item 5).
  # User 1: no ground truth -> excluded.
  # User 2: train {}, ranking 0, 1, 2, 3, 4, 5; ground truth rows [4, 4, 0]
  #   (|G| = 3 with a duplicate): hits at ranks 1 (item 0) and 5 (item 4).
  gt = [[2, 5], [], [4, 4, 0]]
  train = [[0], [1, 3], []]
  got = run(user_emb, item_emb, gt, train, ks=(1, 2, 5), chunk_size=1)
  l2 = math.log2
  expected = {
      'recall@1': (0 + 1 / 3) / 2,
      'precision@1': (0 + 1) / 2,
      'ndcg@1': (0 + 1) / 2,
      'recall@2': (1 / 2 + 1 / 3) / 2,
      'precision@2': (1 / 2 + 1 / 2) / 2,
      # User 0: DCG 1/log2(3), IDCG 1 + 1/log2(3). User 2: DCG 1, same IDCG.
      'ndcg@2': ((1 / l2(3)) / (1 + 1 / l2(3)) + 1 / (1 + 1 / l2(3))) / 2,
      'recall@5': (2 / 2 + 2 / 3) / 2,
      'precision@5': (2 / 5 + 2 / 5) / 2,
      # User 0: IDCG over min(2, 5) = 2 ranks; user 2: over min(3, 5) = 3.
      'ndcg@5': ((1 / l2(3) + 1 / l2(6)) / (1 + 1 / l2(3))
                 + (1 + 1 / l2(6)) / (1 + 1 / l2(3) + 1 / l2(4))) / 2,
      # MAP: precision at each hit's rank over min(|G|, K). User 0 hits at
      # ranks 2 and 5, user 2 at ranks 1 and 5.
      'map@1': (0 + 1 / 1) / 2,
      'map@2': ((1 / 2) / 2 + 1 / 2) / 2,
      'map@5': ((1 / 2 + 2 / 5) / 2 + (1 + 2 / 5) / 3) / 2,
      'hit@1': (0 + 1) / 2, 'hit@2': 1.0, 'hit@5': 1.0,
      'mrr@1': (0 + 1) / 2, 'mrr@2': (1 / 2 + 1) / 2,
      'mrr@5': (1 / 2 + 1) / 2,
  }
  assert_metrics_close(got, expected)


@pytest.mark.parametrize('seed', [0, 1])
def test_random_matches_brute_force(seed):
  ue, ie, gt, train = random_case(seed)
  _, _, _, ref = brute_force(ue, ie, gt, train, KS)
  assert_metrics_close(run(ue, ie, gt, train), ref)


def test_per_user_arrays_and_top_items():
  ue, ie, gt, train = random_case(2)
  users, tops, per_user, _ = brute_force(ue, ie, gt, train, KS)
  gi, gitems = to_csr(gt)
  ti, titems = to_csr(train)
  ranked = ranking.rank_users(jnp.asarray(ue), jnp.asarray(ie), gi, gitems,
                              ti, titems, k=10, chunk_size=8)
  np.testing.assert_array_equal(ranked.users, users)
  np.testing.assert_array_equal(ranked.top_items,
                                np.stack([t[:10] for t in tops]))
  np.testing.assert_array_equal(ranked.n_gt, [len(gt[u]) for u in users])
  got = metrics.topk_metrics(ranked.hits, ranked.n_gt, KS)
  for key, ref in per_user.items():
    np.testing.assert_allclose(got[key], ref, rtol=1e-12, err_msg=key)


def test_top_k_items_is_the_evaluated_ranking_for_any_users():
  ue, ie, gt, train = random_case(4)
  # Any order, a repeat, and a user whose unmasked items are fewer than k.
  n_items = ie.shape[0]
  train[3] = list(range(n_items - 2))
  ti, titems = to_csr(train)
  users = np.array([5, 3, 0, 5, 1], np.int32)
  items, scores = ranking.top_k_items(jnp.asarray(ue), jnp.asarray(ie),
                                      users, ti, titems, k=4, chunk_size=2)
  dense = ue[users].astype(np.float64) @ ie.T.astype(np.float64)
  for row, u in enumerate(users):
    s = dense[row].copy()
    s[train[u]] = -np.inf
    order = np.argsort(-s, kind='stable')[:4]
    want = np.where(np.isneginf(s[order]), -1, order)
    np.testing.assert_array_equal(items[row], want)
    np.testing.assert_allclose(scores[row], s[order], rtol=1e-5)
  assert list(items[1][2:]) == [-1, -1] and np.isneginf(scores[1][2:]).all()
  # The users with ground truth get rank_users' top items (which ranks the
  # masked items last instead of leaving them out: never hits).
  gi, gitems = to_csr(gt)
  ranked = ranking.rank_users(jnp.asarray(ue), jnp.asarray(ie), gi, gitems,
                              ti, titems, k=4, chunk_size=3)
  again, _ = ranking.top_k_items(jnp.asarray(ue), jnp.asarray(ie),
                                 ranked.users, ti, titems, k=4)
  assert (again == -1).any()
  np.testing.assert_array_equal(np.where(again >= 0, ranked.top_items, -1),
                                again)
  with pytest.raises(ValueError, match='1 <= k <= I'):
    ranking.top_k_items(jnp.asarray(ue), jnp.asarray(ie), users, ti, titems,
                        k=n_items + 1)


def test_chunk_sizes_give_identical_results():
  ue, ie, gt, train = random_case(3, n_users=50)
  results = [run(ue, ie, gt, train, chunk_size=c)
             for c in (1, 7, 13, 50, 64, 1024)]
  for r in results[1:]:
    assert r == results[0]


def test_ties_break_towards_lower_item_id():
  # All scores equal: the top-K is the K lowest unmasked item ids.
  n_items = 12
  ue = np.ones((2, 3), np.float32)
  ie = np.ones((n_items, 3), np.float32)
  gt = [[2, 3], [0]]
  train = [[0, 1], [5]]
  gi, gitems = to_csr(gt)
  ti, titems = to_csr(train)
  ranked = ranking.rank_users(jnp.asarray(ue), jnp.asarray(ie), gi, gitems,
                              ti, titems, k=4)
  np.testing.assert_array_equal(ranked.top_items, [[2, 3, 4, 5], [0, 1, 2, 3]])
  got = run(ue, ie, gt, train, ks=(1, 2))
  assert got['recall@1'] == (0.5 + 1.0) / 2
  assert got['recall@2'] == 1.0


def test_more_ground_truth_than_k():
  # Every item is relevant; |G| = 8 > K = 3. Recall uses |G| as denominator
  # (3/8, not 1), NDCG's ideal DCG is capped at K (so NDCG is 1).
  n_items = 8
  ue = np.ones((1, 2), np.float32)
  ie = np.arange(2 * n_items, dtype=np.float32).reshape(n_items, 2)
  got = run(ue, ie, [list(range(n_items))], [[]], ks=(3,))
  assert got['recall@3'] == pytest.approx(3 / 8, abs=1e-15)
  assert got['ndcg@3'] == pytest.approx(1.0, abs=1e-15)
  assert got['precision@3'] == 1.0


def test_training_items_are_masked():
  # Items 0..2 score highest but are training items; they must not be ranked
  # ahead of unmasked items, so ground truth item 3 lands at rank 1.
  ie = np.array([[9], [8], [7], [3], [2], [1]], np.float32)
  ue = np.ones((1, 1), np.float32)
  masked = run(ue, ie, [[3]], [[0, 1, 2]], ks=(1,))
  unmasked = run(ue, ie, [[3]], [[]], ks=(1,))
  assert masked['recall@1'] == 1.0
  assert unmasked['recall@1'] == 0.0


def test_duplicate_ground_truth_rows_count_in_denominator():
  ie = np.array([[3], [2], [1], [0]], np.float32)
  ue = np.ones((1, 1), np.float32)
  got = run(ue, ie, [[0, 0]], [[]], ks=(1, 2))
  # One distinct item, two rows: recall@1 = 1/2; the item counts as one hit.
  assert got['recall@1'] == 0.5
  assert got['recall@2'] == 0.5
  # IDCG over min(|G|=2, K) ranks.
  assert got['ndcg@2'] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_users_without_ground_truth_are_excluded():
  ie = np.array([[3], [2], [1], [0]], np.float32)
  ue = np.ones((3, 1), np.float32)
  # Only user 1 has ground truth, and it is a hit at rank 1.
  got = run(ue, ie, [[], [0], []], [[], [], []], ks=(1,))
  assert got['recall@1'] == 1.0
  got = run(ue, ie, [[], [], []], [[], [], []], ks=(1,))
  assert math.isnan(got['recall@1'])


def test_k_larger_than_n_items():
  # Also covers users whose training items mask (nearly) every item: masked
  # items then fill the top-K in id order, as with the original's -1e10.
  ue, ie, gt, train = random_case(4, n_users=20, n_items=9)
  _, _, _, ref = brute_force(ue, ie, gt, train, (5, 20))
  assert_metrics_close(run(ue, ie, gt, train, ks=(5, 20)), ref)


def test_popularity_baseline():
  train_items = np.array([3, 1, 3, 3, 0, 1, 5])
  counts = metrics.popularity_scores(train_items, 7)
  np.testing.assert_array_equal(counts, [1, 2, 0, 3, 0, 1, 0])
  assert counts.dtype == np.float32
  # As a baseline: every user gets the same ranking 3, 1, 0, 5, 2, 4, 6.
  ue = np.ones((3, 1), np.float32)
  ie = counts[:, None]
  gt = [[1], [2, 0], [6]]
  train = [[], [3], []]
  _, tops, _, ref = brute_force(ue, ie, gt, train, (1, 2, 5))
  np.testing.assert_array_equal(tops[0], [3, 1, 0, 5, 2, 4, 6])
  assert_metrics_close(run(ue, ie, gt, train, ks=(1, 2, 5)), ref)


@pytest.mark.parametrize('seed', [0, 5])
def test_one_pass_over_several_splits_equals_separate_ones(seed):
  ue, ie, valid, train = random_case(seed)
  # A second split with other users empty than the first.
  _, _, test, _ = random_case(seed + 100)
  ti, titems = to_csr(train)
  got = metrics.evaluate_splits(
      jnp.asarray(ue), jnp.asarray(ie),
      {'valid': to_csr(valid), 'test': to_csr(test)}, ti, titems, ks=KS,
      chunk_size=8)
  for name, lists in (('valid', valid), ('test', test)):
    _, _, _, ref = brute_force(ue, ie, lists, train, KS)
    assert_metrics_close(got[name], ref)

"""DualGNN against an independent numpy float64 reading of MMRec's code.

The reference (`_reference`) follows MMRec's src/models/dualgnn.py line by
line and shares nothing with the port: PyG-style message passing over the
deduplicated edge list (degrees from the sources), numpy's own in-place
`+=` for `representation += t_rep` (so the aliasing happens, not a formula
for it), the [U, k, d] gather of `User_Graph_sample`, log2 of the sigmoid.
The user graph is checked against brute-force set intersections, and the
per-epoch padding against a numpy run of MMRec's `topk_sample` loop.
"""

import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest
from data_prep import format as fmt
from data_prep import user_graph
from mentor_jax import data as data_lib
from mentor_jax import family
from mentor_jax import rundirs
from mentor_jax import train
from mentor_jax.models import dualgnn
from mentor_jax.ops import losses
from mentor_jax.ops import sparse


def _np(x):
  return np.asarray(x, np.float64)


def _params(model) -> dict[str, np.ndarray]:
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return {'/'.join(map(str, k)): _np(v[...])
          for k, v in nnx.to_flat_state(params)}


def _batch(dataset, batch_size=24, n_pad=4, seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.choice(dataset.n_train, batch_size, replace=False)
  users = dataset.arrays['train_user'][rows].copy()
  items = dataset.arrays['train_item'][rows].copy()
  users[1], items[1] = users[0], items[0]  # A repeated row.
  mask = np.ones(batch_size, np.float32)
  mask[batch_size - n_pad:] = 0.0
  return data_lib.Batches(
      jnp.asarray(users), jnp.asarray(items),
      jnp.asarray(rng.integers(0, dataset.n_items, batch_size)),
      jnp.asarray(mask))


def _csr_lists(users, items, n_users):
  order = np.lexsort((items, users))
  indptr = np.concatenate([[0], np.cumsum(np.bincount(users,
                                                       minlength=n_users))])
  return indptr, items[order]


# ------------------------------------------------------------ user graph ---


def _splitmix(u: int, v: int) -> int:
  """splitmix64 of (u << 32 | v) in Python integers (mod 2**64)."""
  m = (1 << 64) - 1
  x = ((u << 32 | v) + 0x9E3779B97F4A7C15) & m
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
  return x ^ (x >> 31)


def test_ties_are_not_ordered_by_id():
  # Ordering ties by id made every user's 40 keep the lowest ids (hubs).
  n_users = 400
  users = np.repeat(np.arange(n_users), 1)
  items = np.zeros(n_users, np.int64)  # Everyone shares item 0: all ties.
  indptr, sorted_items = _csr_lists(users, items, n_users)
  nbr, cnt = user_graph.cooccurrence_neighbours(indptr, sorted_items, 1,
                                                top=40)
  assert (cnt == 1).all()
  # Each user's 40 are spread over the ids, not the 40 lowest.
  picked = np.bincount(nbr.ravel(), minlength=n_users)
  assert picked[:40].sum() < 0.3 * nbr.size, picked[:40].sum()
  assert nbr.mean() > 0.3 * n_users


def test_cooccurrence_lists_match_brute_force_intersections():
  rng = np.random.default_rng(0)
  n_users, n_items, top = 50, 30, 8
  users = rng.integers(0, n_users - 1, 400)  # The last user: no rows.
  items = rng.integers(0, n_items, 400)  # Repeated rows among them.
  indptr, sorted_items = _csr_lists(users, items, n_users)
  sets = [set(sorted_items[indptr[u]:indptr[u + 1]]) for u in range(n_users)]
  for block in (1, 37, 1 << 22):  # Row blocks of every size.
    nbr, cnt = user_graph.cooccurrence_neighbours(
        indptr, sorted_items, n_items, top=top, block_entries=block)
    assert nbr.shape == cnt.shape == (n_users, top)
    for u in range(n_users):
      # Count descending, then the pair's splitmix64 key ascending.
      want = sorted((-len(sets[u] & sets[v]), _splitmix(u, v), v)
                    for v in range(n_users)
                    if v != u and sets[u] & sets[v])[:top]
      n = int((nbr[u] >= 0).sum())
      assert nbr[u, :n].tolist() == [v for _, _, v in want], u
      assert cnt[u, :n].tolist() == [-c for c, _, _ in want], u
      assert (nbr[u, n:] == -1).all() and (cnt[u, n:] == 0).all()
  assert (nbr[-1] == -1).all()
  assert len(set(zip(users, items))) < 400  # Duplicates were there.
  # Ties decided which neighbours were kept at the cap.
  assert any(cnt[u, -1] == cnt[u, -2] for u in range(n_users))


def test_lists_are_kept_next_to_the_npz_and_rebuilt_when_stale(
    tmp_path, monkeypatch):
  npz = tmp_path / 'toy.npz'
  indptr, items = _csr_lists(np.array([0, 0, 1, 1, 2]),
                             np.array([0, 1, 1, 2, 0]), 3)
  first = user_graph.neighbours_for_dataset(npz, indptr, items, 3)
  side = tmp_path / 'toy.user_graph.npz'
  assert side.is_file() and not npz.exists()
  real_build = user_graph.cooccurrence_neighbours

  def no_build(*a, **kw):
    raise AssertionError('rebuilt although the stored lists fit')
  monkeypatch.setattr(user_graph, 'cooccurrence_neighbours', no_build)
  again = user_graph.neighbours_for_dataset(npz, indptr, items, 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  # Other training rows (same shapes): rebuilt, and stored anew.
  monkeypatch.setattr(user_graph, 'cooccurrence_neighbours', real_build)
  indptr2, items2 = _csr_lists(np.array([0, 0, 1, 1, 2]),
                               np.array([0, 1, 1, 2, 2]), 3)
  nbr, _ = user_graph.neighbours_for_dataset(npz, indptr2, items2, 3)
  assert nbr[0].tolist() == [1, -1] and nbr[2].tolist() == [1, -1]
  # A damaged file is rebuilt, not trusted.
  side.write_bytes(b'not a zip')
  nbr, _ = user_graph.neighbours_for_dataset(npz, indptr2, items2, 3)
  assert sorted(nbr[1].tolist()) == [0, 2]  # A tie: the pair key's order.
  # Lists stored in another tie order (id ascending, before) are rebuilt.
  with np.load(side) as z:
    old = {k: z[k] for k in z.files if k != 'tie_rule'}
  old['nbr'] = np.sort(old['nbr'], axis=1)[:, ::-1].copy()
  np.savez(side, **old)
  monkeypatch.setattr(user_graph, 'cooccurrence_neighbours', no_build)
  with pytest.raises(AssertionError, match='rebuilt although'):
    user_graph.neighbours_for_dataset(npz, indptr2, items2, 3)


def _save_mmrec(path, graph):
  np.save(path, graph, allow_pickle=True)  # As MMRec's script does.
  return path


def test_mmrec_file_round_trip_and_clear_errors(tmp_path):
  nbr = np.array([[2, 1], [0, -1], [-1, -1]], np.int32)
  cnt = np.array([[3, 1], [1, 0], [0, 0]], np.int32)
  graph = user_graph.to_mmrec_dict(nbr, cnt)
  assert graph[0] == [[2, 1], [3.0, 1.0]] and graph[2] == [[], []]
  path = _save_mmrec(tmp_path / 'user_graph_dict.npy', graph)
  for where in (path, tmp_path):  # The file or its folder.
    got_nbr, got_cnt = user_graph.load_mmrec_file(where, 3)
    np.testing.assert_array_equal(got_nbr, nbr)
    np.testing.assert_array_equal(got_cnt, cnt.astype(np.float32))

  def error(graph, n_users=3):
    bad = _save_mmrec(tmp_path / 'bad.npy', graph)
    with pytest.raises(fmt.DataError) as e:
      user_graph.load_mmrec_file(bad, n_users)
    assert str(bad) in str(e.value)
    return str(e.value)

  assert 'the dataset has 4 users' in error(graph, 4)
  assert 'user 1: neighbour ids must be integers in [0, 3)' in error(
      {**graph, 1: [[3], [1.0]]})
  assert 'user 0: 2 neighbour ids but 1 counts' in error(
      {**graph, 0: [[2, 1], [3.0]]})
  with pytest.raises(fmt.DataError, match='no such file'):
    user_graph.load_mmrec_file(tmp_path / 'missing.npy', 3)

  # A pickle that names any other callable is refused, not run.
  marker = tmp_path / 'ran'

  class Payload:
    def __reduce__(self):
      return (os.mkdir, (str(marker),))
  assert 'mkdir' in error(np.array(Payload(), dtype=object))
  assert not marker.exists()
  # What a plain unpickler (np.load(allow_pickle=True)) would have done:
  assert pickle.loads(pickle.dumps(Payload())) is None and marker.exists()


def test_create_model_reads_an_mmrec_file_as_stored(tiny_dataset, tmp_path):
  b = conftest.build_baseline('dualgnn', tiny_dataset)
  built = np.asarray(b.model.user_nbr[...])
  # The stored lists, reversed: MMRec reads the first 40 as the file has
  # them (here the weakest neighbours first).
  stored = np.load(user_graph.sidecar_path(tiny_dataset))
  graph = user_graph.to_mmrec_dict(stored['nbr'], stored['cnt'])
  graph = {u: [ids[::-1], c[::-1]] for u, (ids, c) in graph.items()}
  graph[0] = [[], []]
  path = _save_mmrec(tmp_path / 'user_graph_dict.npy', graph)
  m = conftest.build_baseline('dualgnn', tiny_dataset,
                              user_graph_file=str(tmp_path)).model
  n = np.asarray(m.user_deg[...])
  assert n[0] == 0 and not np.asarray(m.user_cnt[...])[0].any()
  for u in range(1, 60):
    assert n[u] == min(len(graph[u][0]), 40)
    assert m.user_nbr[...][u, :n[u]].tolist() == graph[u][0][:40]
  assert not np.array_equal(np.asarray(m.user_nbr[...]), built)
  _save_mmrec(path, {u: graph[u] for u in range(59)})
  with pytest.raises(fmt.DataError, match='user_graph_dict.npy: expected one '
                     'entry per user 0..59'):
    conftest.build_baseline('dualgnn', tiny_dataset,
                            user_graph_file=str(path))


# ------------------------------------------------------ per-epoch padding ---


def _mmrec_topk_sample(lists, k, rng):
  """MMRec's `topk_sample` loop (softmax mode) on {u: [ids, counts]}."""
  index, weights = [], np.zeros((len(lists), k))
  for i in range(len(lists)):
    ids, counts = list(lists[i][0][:k]), list(lists[i][1][:k])
    if len(lists[i][0]) < k:
      if not lists[i][0]:
        index.append([0] * k)
        continue
      while len(ids) < k:
        r = rng.randint(0, len(ids))
        ids.append(ids[r])
        counts.append(counts[r])
    e = np.exp(np.asarray(counts, np.float64) - max(counts))
    weights[i] = e / e.sum()
    index.append(ids)
  return np.asarray(index), weights


def _device_lists(lists, k):
  """(ids, counts, n) as `first_neighbours` gives them for {u: [ids, c]}."""
  width = max(1, max(len(ids) for ids, _ in lists.values()))
  nbr = np.full((len(lists), width), -1, np.int32)
  cnt = np.zeros((len(lists), width), np.float32)
  for u, (ids, counts) in lists.items():
    nbr[u, :len(ids)], cnt[u, :len(ids)] = ids, counts
  return dualgnn.first_neighbours(nbr, cnt, k)


class _ListsOnly:
  """The arrays `epoch_user_graph` reads off a model."""

  def __init__(self, ids, counts, n_real):
    self.user_nbr = jnp.asarray(ids)
    self.user_cnt = jnp.asarray(counts)
    self.user_deg = jnp.asarray(n_real)


def _dense(s: sparse.Csr) -> np.ndarray:
  return np.asarray(sparse.spmm(s, jnp.eye(s.n_cols)), np.float64)


def _softmax(x):
  e = np.exp(_np(x) - np.max(x))
  return e / e.sum()


def test_padding_keeps_real_entries_and_weights_are_mmrecs():
  k = 6
  lists = {0: [[], []], 1: [[4], [2.0]], 2: [[3, 1, 5], [3.0, 1.0, 1.0]],
           3: [[0, 1, 2, 4, 5, 6, 7], [5.0, 4, 3, 3, 2, 1, 1]],
           4: [[0, 2, 3, 5, 6, 7], [1.0, 1, 1, 1, 1, 0.5]], 5: [[], []],
           6: [[0], [1.0]], 7: [[1, 2], [2.0, 2.0]]}
  ids, counts, n_real = _device_lists(lists, k)
  assert n_real.tolist() == [0, 1, 3, 6, 6, 0, 1, 2]
  model = _ListsOnly(ids, counts, n_real)
  key = jax.random.key(3)
  pad_ids, pad_cnt = (np.asarray(x) for x in dualgnn.pad_neighbours(
      key, model.user_nbr, model.user_cnt, model.user_deg))
  assert pad_ids.shape == (8, k)
  by_id = lambda u: dict(zip(*lists[u]))
  for u, n in enumerate(n_real):
    # The real entries stay where they are; every padded slot copies one.
    assert pad_ids[u, :n].tolist() == lists[u][0][:n]
    assert set(pad_ids[u]) <= set(lists[u][0]) or n == 0
    np.testing.assert_array_equal(pad_cnt[u, :n], lists[u][1][:n])
    if n:
      np.testing.assert_array_equal(pad_cnt[u],
                                    [by_id(u)[i] for i in pad_ids[u]])
  assert pad_ids[0].tolist() == [0] * k and not pad_cnt[0].any()
  assert pad_ids[1].tolist() == [4] * k
  # MMRec's weights: softmax over the padded list (duplicates add), none
  # for a user without neighbours; S and its transpose for the backward.
  want = np.zeros((8, 8))
  for u in np.flatnonzero(n_real):
    np.add.at(want[u], pad_ids[u], _softmax(pad_cnt[u]))
  s, s_t = dualgnn.epoch_user_graph(model, key)
  np.testing.assert_allclose(_dense(s), want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(_dense(s_t), want.T, rtol=1e-6, atol=1e-7)
  # Scoring's graph: no padding, the softmax over the real entries.
  want = np.zeros((8, 8))
  for u in np.flatnonzero(n_real):
    n = n_real[u]
    want[u, lists[u][0][:n]] = _softmax(lists[u][1][:n])
  np.testing.assert_allclose(_dense(dualgnn.epoch_user_graph(model, None)[0]),
                             want, rtol=1e-6, atol=1e-7)


def test_padding_draws_follow_mmrecs_polya_urn():
  # Every row the same 3-neighbour list, padded to MMRec's 40: row r of one
  # call is one independent run of MMRec's loop for that user.
  k, n_rows, n_ref = 40, 20000, 40000
  lists = {0: [[7, 8, 9], [3.0, 2.0, 1.0]]}
  ids, counts, n_real = (np.repeat(x, n_rows, 0)
                         for x in _device_lists(lists, k))
  pad_ids, _ = dualgnn.pad_neighbours(jax.random.key(0), jnp.asarray(ids),
                                      jnp.asarray(counts),
                                      jnp.asarray(n_real))
  ours = np.asarray(pad_ids)
  ref, _ = _mmrec_topk_sample({u: lists[0] for u in range(n_ref)}, k,
                              np.random.RandomState(0))

  def close(p_ours, p_ref, what):
    # 5 standard errors of the difference of two frequencies.
    sd = np.sqrt(p_ref * (1 - p_ref) * (1 / n_rows + 1 / n_ref))
    bad = np.abs(p_ours - p_ref) > 5 * sd + 2 / n_rows
    assert not bad.any(), (what, np.flatnonzero(bad), p_ours[bad],
                           p_ref[bad])

  # How many of the 40 slots hold neighbour 7: 1 + BetaBinomial(37, 1, 2)
  # for the urn (sd ~ 9), 1 + Binomial(37, 1/3) for uniform draws (sd ~ 3).
  bins = np.arange(k + 2)
  hist = lambda x: np.histogram((x == 7).sum(1), bins)[0] / len(x)
  close(hist(ours), hist(ref), 'copies of one neighbour')
  # Each slot's value.
  for value in (7, 8, 9):
    close((ours == value).mean(0), (ref == value).mean(0), f'slot = {value}')
  # Two padded slots agree more often than independent draws would.
  close((ours[:, 3:] == ours[:, 4:5]).mean(0),
        (ref[:, 3:] == ref[:, 4:5]).mean(0), 'agreement with slot 4')


# ------------------------------------------------- forward, loss, step ---


def _conv(x, rows, cols, deg):
  """Base_gcn with aggr 'add': PyG's propagate from source `rows` to
  target `cols`, norm deg^-1/2[row] deg^-1/2[col] (degrees of the sources)."""
  out = np.zeros_like(x)
  norm = deg[rows] ** -0.5 * deg[cols] ** -0.5
  np.add.at(out, cols, norm[:, None] * x[rows])
  return out


def _edge_index(dataset):
  """MMRec's edge_index: inter_matrix('coo').astype(float32) merges repeated
  rows; (user, U + item) pairs and their reverses."""
  n_users = dataset.n_users
  pairs = np.array(sorted(set(zip(dataset.arrays['train_user'].tolist(),
                                  dataset.arrays['train_item'].tolist()))))
  u, i = pairs[:, 0], pairs[:, 1] + n_users
  rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
  deg = np.bincount(rows, minlength=n_users + dataset.n_items).astype(float)
  return rows, cols, deg


def _reference(p, dataset, nbr, weights, batch, reg_weight, fusion='mmrec'):
  """MMRec's forward and calculate_loss in float64.

  Returns:
    (user rows [U, d], item rows [I, d], bpr, reg).
  """
  n_users = dataset.n_users
  rows, cols, deg = _edge_index(dataset)
  reps = {}
  for m in ('v', 't'):
    g = lambda name: p[f'gcn_{m}/{name}']
    feats = _np(dataset.arrays[f'feat_{m}'])
    hidden = feats @ g('mlp_w') + g('mlp_b')
    hidden = np.where(hidden > 0, hidden, 0.01 * hidden)  # F.leaky_relu
    x = np.concatenate([g('preference'), hidden @ g('mlp1_w') + g('mlp1_b')])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    h = _conv(x, rows, cols, deg)
    reps[m] = h + x + _conv(h, rows, cols, deg)
  v_rep, t_rep = reps['v'], reps['t']
  representation = v_rep
  if fusion == 'mmrec':
    representation += t_rep  # In place, as torch's: v_rep is now v + t.
  else:
    representation = representation + t_rep
  user_rep = (np.concatenate([v_rep[:n_users, :, None],
                              t_rep[:n_users, :, None]], 2)
              @ p['weight_u'][:, :, None])[..., 0]
  item_rep = representation[n_users:]
  h_u1 = (weights[:, None, :] @ user_rep[nbr])[:, 0]  # User_Graph_sample
  user_rep = user_rep + h_u1
  b = jax.tree.map(np.asarray, batch)
  keep = b.mask > 0
  users, pos, neg = b.users[keep], b.pos_items[keep], b.neg_items[keep]
  diff = ((user_rep[users] * item_rep[pos]).sum(1)
          - (user_rep[users] * item_rep[neg]).sum(1))
  bpr = -np.mean(np.log2(1.0 / (1.0 + np.exp(-diff))))
  reg = reg_weight * ((p['gcn_v/preference'][users] ** 2).mean()
                      + (p['gcn_t/preference'][users] ** 2).mean()
                      + (p['weight_u'] ** 2).mean()
                      + (p['weight_i'] ** 2).mean())
  return user_rep, item_rep, bpr, reg


def _epoch_graph(model, key):
  """This epoch's padded (ids, MMRec weights) in float64, from the port's
  padding (its distribution is checked above)."""
  n_real = np.asarray(model.user_deg[...])
  ids, cnt = (np.asarray(x) for x in dualgnn.pad_neighbours(
      key, model.user_nbr[...], model.user_cnt[...], model.user_deg[...]))
  weights = np.zeros(ids.shape)
  for u in np.flatnonzero(n_real):
    weights[u] = _softmax(cnt[u])
  return ids, weights


def _short_lists_file(npz, folder):
  """The stored lists with user 0 alone, user 1 with one neighbour, user 2
  with three, as an MMRec file (tiny's users all have 16 or more)."""
  stored = np.load(user_graph.sidecar_path(npz))
  graph = user_graph.to_mmrec_dict(stored['nbr'], stored['cnt'])
  graph[0] = [[], []]
  graph[1] = [graph[1][0][:1], graph[1][1][:1]]
  graph[2] = [graph[2][0][:3], graph[2][1][:3]]
  return _save_mmrec(folder / 'user_graph_dict.npy', graph)


@pytest.mark.parametrize('fusion, lists, kernel', [
    ('mmrec', 'built', 'auto'), ('paper', 'built', 'auto'),
    ('mmrec', 'short', 'auto'), ('mmrec', 'built', 'segment_sum')])
def test_forward_and_loss_match_numpy_reference(tiny_dataset, tmp_path,
                                                fusion, lists, kernel):
  conftest.build_baseline('dualgnn', tiny_dataset)  # Stores the lists.
  extra = {} if lists == 'built' else {
      'user_graph_file': str(_short_lists_file(tiny_dataset, tmp_path))}
  b = conftest.build_baseline('dualgnn', tiny_dataset, user_fusion=fusion,
                              spmm_kernel=kernel, **extra)
  assert b.hp.reg_weight == 0.1 and b.config.eval_embeddings == 'last_step'
  key = jax.random.key(11)
  aux = dualgnn.epoch_user_graph(b.model, key)
  nbr, weights = _epoch_graph(b.model, key)
  if lists == 'short':
    assert not weights[0].any() and (nbr[1] == nbr[1, 0]).all()
    assert len(set(nbr[2])) == 3
  batch = _batch(b.dataset)
  p = _params(b.model)
  users, items, bpr, reg = _reference(p, b.dataset, nbr, weights, batch, 0.1,
                                      fusion)
  total, (parts, (got_u, got_i)) = dualgnn.loss(b.model, b.data, batch, None,
                                                b.hp, aux)
  np.testing.assert_allclose(got_u, users, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_i, items, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(parts['bpr'], bpr, rtol=1e-5)
  np.testing.assert_allclose(parts['reg'], reg, rtol=1e-5)
  np.testing.assert_allclose(total, bpr + reg, rtol=1e-5)
  # The two fusions differ (by w_u0 t on the users).
  other = 'paper' if fusion == 'mmrec' else 'mmrec'
  users_other = _reference(p, b.dataset, nbr, weights, batch, 0.1, other)[0]
  assert np.abs(users_other - users).max() > 1e-2
  # Scoring (eval_embeddings='recompute'): the unpadded graph.
  n_real = np.asarray(b.model.user_deg[...])
  cnt = _np(b.model.user_cnt[...])
  slots = np.arange(40)[None, :] < n_real[:, None]
  weights0 = np.where(slots, np.exp(cnt - cnt.max(1, keepdims=True)), 0.0)
  weights0 /= np.maximum(weights0.sum(1, keepdims=True), 1e-30)
  want_u, want_i, _, _ = _reference(p, b.dataset,
                                    np.asarray(b.model.user_nbr[...]),
                                    weights0, batch, 0.1, fusion)
  got_u, got_i = dualgnn.score(b.model, b.data, b.hp)
  np.testing.assert_allclose(got_u, want_u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_i, want_i, rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences(tiny_dataset):
  b = conftest.build_baseline('dualgnn', tiny_dataset)
  key = jax.random.key(5)
  aux = dualgnn.epoch_user_graph(b.model, key)
  nbr, weights = _epoch_graph(b.model, key)
  batch = _batch(b.dataset, seed=1)
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  grads = jax.jit(jax.grad(lambda q: dualgnn.loss(
      nnx.merge(graphdef, q, rest), b.data, batch, None, b.hp, aux)[0]))(
          params)
  grads = {'/'.join(map(str, k)): _np(v[...])
           for k, v in nnx.to_flat_state(grads)}
  p0 = _params(b.model)

  def reference(p):
    _, _, bpr, reg = _reference(p, b.dataset, nbr, weights, batch, 0.1)
    return bpr + reg

  rng = np.random.default_rng(0)
  eps = 1e-6
  for name, value in p0.items():
    assert np.abs(grads[name]).max() > 0, name  # Everything trains.
    v = rng.normal(size=value.shape)
    numeric = (reference({**p0, name: value + eps * v})
               - reference({**p0, name: value - eps * v})) / (2 * eps)
    np.testing.assert_allclose(np.sum(grads[name] * v), numeric, rtol=2e-3,
                               atol=1e-6, err_msg=name)
  # weight_i is in the regularizer only: its gradient is reg * 2 w / size.
  np.testing.assert_allclose(grads['weight_i'],
                             0.1 * 2 * p0['weight_i'] / p0['weight_i'].size,
                             rtol=1e-5)


def test_epoch_setup_then_one_adam_step(tiny_dataset):
  b = conftest.build_baseline('dualgnn', tiny_dataset)
  graphdef, params, rest = nnx.split(b.model, nnx.Param, ...)
  tx = b.family.make_optimizer(b.hp)
  ctx = family.EpochContext(b.family, graphdef, rest, b.data, b.hp, tx)
  opt_state = tx.init(params)
  key = jax.random.key(9)
  start = b.family.epoch_setup(ctx, params, opt_state, key)
  ctx = ctx._replace(aux=start.aux)
  batch = _batch(b.dataset, seed=2)
  out = b.family.train_step(ctx, start.params, start.opt_state, batch,
                            jax.random.key(1), 0)
  # The step's loss is MMRec's on the graph this key pads.
  nbr, weights = _epoch_graph(b.model, key)
  p0 = _params(b.model)
  _, _, bpr, reg = _reference(p0, b.dataset, nbr, weights, batch, 0.1)
  np.testing.assert_allclose(out.parts['bpr'], bpr, rtol=1e-5)
  np.testing.assert_allclose(out.parts['reg'], reg, rtol=1e-5)
  # Adam's first step (torch's defaults): p - lr g / (|g| + eps).
  grads = jax.grad(lambda q: ctx.loss(q, batch, key)[0])(start.params)
  lr = b.config.learning_rate
  assert lr == b.hp.learning_rate == 0.1  # DualGNN.yaml's first cell.
  for (path, new), (_, g), (_, old) in zip(
      nnx.to_flat_state(out.params), nnx.to_flat_state(grads),
      nnx.to_flat_state(params)):
    g = _np(g[...])
    want = _np(old[...]) - lr * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(new[...], want, rtol=1e-5, atol=1e-6,
                               err_msg=str(path))


def test_ui_graph_counts_a_repeated_row_once():
  # Users 0, 1; items 0, 1 (nodes 2, 3); user 0 has item 0 twice.
  u, i = np.array([0, 0, 0, 1]), np.array([2, 2, 3, 3])
  rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
  order = np.lexsort((cols, rows))
  rows, cols = rows[order], cols[order]
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=4))])
  adj = sparse.csr_from_numpy(indptr, cols, np.ones(len(cols)))
  got = dualgnn.distinct_pair_graph(adj)
  pairs = {(0, 2), (0, 3), (1, 3)}
  e_rows = np.array([a for a, b in pairs] + [b for a, b in pairs])
  e_cols = np.array([b for a, b in pairs] + [a for a, b in pairs])
  deg = np.bincount(e_rows, minlength=4).astype(float)
  x = np.random.default_rng(0).normal(size=(4, 3))
  for kernel in sparse.KERNELS:
    np.testing.assert_allclose(
        sparse.spmm(got, jnp.asarray(x, jnp.float32), kernel=kernel),
        _conv(x, e_rows, e_cols, deg), rtol=1e-5, atol=1e-6)


def test_init_follows_torch(tiny_dataset):
  m = conftest.build_baseline('dualgnn', tiny_dataset).model
  n_users, n_items = 60, 40
  pref = _np(m.gcn_v.preference[...])
  assert pref.shape == (n_users, 64)
  assert abs(pref.std() / math.sqrt(2 / (n_users + 64)) - 1) < 0.1
  assert np.abs(pref).max() > 2.5 * pref.std()  # Normal, not uniform.
  for gcn, f in ((m.gcn_v, 32), (m.gcn_t, 16)):
    for name, fan_in, shape in (('mlp_w', f, (f, 256)), ('mlp_b', f, (256,)),
                                ('mlp1_w', 256, (256, 64)),
                                ('mlp1_b', 256, (64,))):
      x = _np(getattr(gcn, name)[...])
      bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and bias
      assert x.shape == shape and np.abs(x).max() <= bound
      assert np.abs(x).max() > 0.9 * bound
  for w, n in ((m.weight_u, n_users), (m.weight_i, n_items)):
    w = _np(w[...])
    assert w.shape == (n, 2)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)  # softmax once
    # xavier_normal on (n, 2, 1): std sqrt(2 / (n + 2)) before the softmax.
    logit_gap = np.log(w[:, 0]) - np.log(w[:, 1])
    assert abs(logit_gap.std() / math.sqrt(2 * 2 / (n + 2)) - 1) < 0.25


def test_trains_through_the_shared_trainer(tiny_dataset, tmp_path):
  config = conftest.baseline_config('dualgnn', tiny_dataset)
  config.train_batch_size = 64
  config.epochs = 3
  config.learning_rate = 1e-2
  result = train.train_and_evaluate(config, tmp_path)
  log = rundirs.read_metrics(tmp_path)
  assert len(log) == result['epochs_run'] == 3
  bpr = [r['loss']['bpr'] for r in log]
  assert bpr[-1] < 0.9 * bpr[0], bpr
  assert all(math.isfinite(sum(r['loss'].values())) for r in log)


def test_bpr_overflows_to_inf_as_mmrecs_log2_sigmoid(tiny_dataset):
  # MMRec's -log2(sigmoid(d)) in float32: +inf once d < ~-88 (its lr 0.1
  # runs end there). The stable form would stay finite and train on.
  b = conftest.build_baseline('dualgnn', tiny_dataset)
  batch = _batch(b.dataset)
  graph = dualgnn.epoch_user_graph(b.model, jax.random.key(0))
  finite = dualgnn.loss(b.model, b.data, batch, None, b.hp, graph)[1][0]
  assert np.isfinite(finite['bpr'])
  b.model.weight_u[...] = b.model.weight_u[...] * 300  # Scores ~ +-1e2.
  parts = dualgnn.loss(b.model, b.data, batch, None, b.hp, graph)[1][0]
  assert np.isinf(parts['bpr']) and parts['bpr'] > 0


def test_bpr_loss_as_written_equals_the_stable_form_where_finite():
  d = jnp.array([-30.0, -1.0, 0.0, 2.5, 40.0])
  np.testing.assert_allclose(
      losses.bpr_loss(d, jnp.zeros(5), stable=False),
      losses.bpr_loss(d, jnp.zeros(5)), rtol=1e-6)
  assert np.isinf(losses.bpr_loss(jnp.array([-100.0]), jnp.zeros(1),
                                  stable=False))

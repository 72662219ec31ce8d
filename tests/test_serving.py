"""Serving: export round trip, the indexes, new items, and the HTTP service.

One tiny VBPR run (module fixture) is exported; its rankings are checked
against `mentor-evaluate`'s metrics and `mentor-recommend`'s lists, the
indexes against numpy, new-item vectors against VBPR's formula by hand,
and the service as a real process over loopback HTTP.
"""

import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from configs import tiny
from data_prep.format import DataError
from mentor_jax import errors
from mentor_jax import evaluate as evaluate_lib
from mentor_jax import ranking
from mentor_jax import registry
from mentor_jax import train
from mentor_jax.serving import cold
from mentor_jax.serving import export as export_lib
from mentor_jax.serving import index as index_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run(tiny_dataset, tmp_path_factory):
  """A 2-epoch VBPR workdir that ranks the last step's (stored) vectors."""
  config = tiny.get_config('vbpr')
  config.data_npz = str(tiny_dataset)
  config.epochs = 2
  config.eval_embeddings = 'last_step'
  workdir = tmp_path_factory.mktemp('vbpr')
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  out = tmp_path_factory.mktemp('exports') / 'vbpr'
  assert export_lib.main(['--workdir', str(run), '--out', str(out)]) == 0
  return out


def _numpy_top_k(queries, items, k, exclude):
  scores = queries.astype(np.float64) @ items.T.astype(np.float64)
  for row, ex in enumerate(exclude):
    scores[row, ex] = -np.inf
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  top = np.take_along_axis(scores, order, axis=1)
  return np.where(np.isneginf(top), -1, order), top


def test_blocked_top_k_matches_numpy_with_ties_and_exclusions():
  rng = np.random.default_rng(0)
  items = rng.normal(size=(37, 4)).astype(np.float32)
  items[20] = items[3]  # a tie across blocks: the lower id ranks first
  items[5] = items[3]   # and one inside a block
  queries = rng.normal(size=(6, 4)).astype(np.float32)
  queries[0] = items[3]
  exclude = [np.array([1, 2], np.int32), np.array([], np.int32),
             np.array([3, 36], np.int32), np.arange(30, dtype=np.int32),
             np.array([0], np.int32), np.array([10, 11, 12], np.int32)]
  index = index_lib.ExactIndex(items, block=8)
  ids, scores = index.search(queries, 9, exclude)
  ref_ids, ref_scores = _numpy_top_k(queries, items, 9, exclude)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
  assert list(ids[0][:3]) == [3, 5, 20]
  # Fewer items left than k: the rest are -1 / -inf.
  ids, scores = index.search(queries[:1], 9, [np.arange(33, dtype=np.int32)])
  assert sorted(ids[0][:4]) == [33, 34, 35, 36]
  assert (ids[0][4:] == -1).all() and np.isneginf(scores[0][4:]).all()


def test_hnsw_recall_on_a_seeded_case():
  pytest.importorskip('faiss', reason='faiss-cpu (the serve extra)')
  rng = np.random.default_rng(1)
  items = rng.normal(size=(3000, 32)).astype(np.float32)
  queries = rng.normal(size=(200, 32)).astype(np.float32)
  exclude = [rng.choice(3000, size=rng.integers(0, 20), replace=False)
             for _ in range(200)]
  exact, _ = index_lib.ExactIndex(items).search(queries, 10, exclude)
  approx, scores = index_lib.HnswIndex(items, threads=1).search(
      queries, 10, exclude)
  recall = index_lib.recall_against(exact, approx)
  assert recall >= 0.95, recall
  for row, ex in enumerate(exclude):
    assert not np.isin(approx[row], ex).any()
  assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
  # The measure itself: a disjoint answer scores 0, the same one 1.
  assert index_lib.recall_against(exact, exact) == 1.0
  assert index_lib.recall_against(exact, exact + 3000) == 0.0


def test_export_ranks_as_evaluate_and_recommend(run, exported):
  ex = export_lib.load(exported)
  restored = evaluate_lib.load(run)
  (user, item), mode = evaluate_lib.embeddings(restored)
  assert mode == 'saved' and ex.manifest['embeddings'] == 'saved'
  np.testing.assert_array_equal(ex.user_emb, np.asarray(user))
  np.testing.assert_array_equal(ex.item_emb, np.asarray(item))
  assert ex.manifest['epoch'] == restored.epoch
  assert ex.manifest['dataset']['digest'] == restored.dataset.digest
  # Every user's top 20 from the export's index...
  users = np.arange(ex.n_users)
  ids, _ = index_lib.ExactIndex(ex.item_emb, block=16).search(
      ex.user_emb, 20, [ex.seen(u) for u in users])
  ref_ids, _ = ranking.top_k_items(user, item, users,
                                   *restored.dataset.split('train'), k=20)
  np.testing.assert_array_equal(ids, ref_ids)
  # ... gives evaluate's test Recall@20 and NDCG@20 (numpy, MMRec's forms).
  indptr, test_items = restored.dataset.split('test')
  recalls, ndcgs = [], []
  for u in users:
    truth = set(test_items[indptr[u]:indptr[u + 1]].tolist())
    if not truth:
      continue
    hit = np.array([i in truth for i in ids[u]], float)
    recalls.append(hit.sum() / len(truth))
    discount = 1 / np.log2(np.arange(2, 22))
    ndcgs.append((hit * discount).sum()
                 / discount[:min(len(truth), 20)].sum())
  result = evaluate_lib.evaluate(restored)
  assert np.mean(recalls) == pytest.approx(result['test']['recall@20'], 1e-6)
  assert np.mean(ndcgs) == pytest.approx(result['test']['ndcg@20'], 1e-6)
  assert ex.manifest['metrics']['test']['recall@20'] == pytest.approx(
      result['test']['recall@20'], 1e-9)


def _write_maps(folder, n_users, n_items):
  folder.mkdir()
  users = [f'u{9000 - u}' for u in range(n_users)]  # not in row order
  (folder / 'u_id_mapping.csv').write_text(
      'reviewerID\tuserID\n' + ''.join(f'{s}\t{u}\n' for u, s in
                                       reversed(list(enumerate(users)))))
  (folder / 'i_id_mapping.csv').write_text(
      'asin\titemID\n' + ''.join(f'B{i:04d}\t{i}\n' for i in range(n_items)))
  return users


def test_export_source_ids_and_refusals(run, exported, tmp_path, capsys):
  ex = export_lib.load(exported)
  users = _write_maps(tmp_path / 'maps', ex.n_users, ex.n_items)
  out = tmp_path / 'with_ids'
  assert export_lib.main(['--workdir', str(run), '--out', str(out),
                          '--id-maps', str(tmp_path / 'maps')]) == 0
  mapped = export_lib.load(out)
  assert mapped.user_ids.tolist() == users
  assert mapped.item_ids[7] == 'B0007'
  # Never replaced.
  before = sorted(p.name for p in out.iterdir())
  capsys.readouterr()
  assert export_lib.main(['--workdir', str(run), '--out', str(out)]) == 2
  assert 'exists' in capsys.readouterr().err
  assert sorted(p.name for p in out.iterdir()) == before
  # A mapping that does not cover every row is named in one line.
  (tmp_path / 'maps' / 'i_id_mapping.csv').write_text('asin\titemID\nB1\t0\n')
  assert export_lib.main(['--workdir', str(run), '--out',
                          str(tmp_path / 'bad'), '--id-maps',
                          str(tmp_path / 'maps')]) == 3
  err = capsys.readouterr().err
  assert 'i_id_mapping.csv' in err and 'itemID' in err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / 'bad').exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


def test_new_items_are_vbpr_vectors_by_hand(run, tmp_path):
  restored = evaluate_lib.load(run)
  rng = np.random.default_rng(2)
  feat_v = rng.normal(size=(3, restored.dataset.dim_v)).astype(np.float32)
  feat_t = rng.normal(size=(3, restored.dataset.dim_t)).astype(np.float32)
  path = tmp_path / 'new.npz'
  np.savez(path, feat_v=feat_v, feat_t=feat_t, ids=np.array(['a', 'b', 'c']))
  vectors, ids = cold.embed_new_items(restored, path)
  p = {k: np.asarray(v, np.float64) for k, v in
       ((k, restored.params[k][...]) for k in ('proj_w', 'proj_b'))}
  # VBPR's item row: [ID row ‖ [f_t ‖ f_v] W + b]; a new item's ID row is 0.
  dim = vectors.shape[1] // 2
  expected = np.concatenate([np.zeros((3, dim)),
                             np.concatenate([feat_t, feat_v], 1) @ p['proj_w']
                             + p['proj_b']], axis=1)
  np.testing.assert_allclose(vectors, expected, rtol=2e-5, atol=2e-5)
  assert ids.tolist() == ['a', 'b', 'c']
  # Added to an export after the dataset's items.
  out = tmp_path / 'ex'
  assert export_lib.main(['--workdir', str(run), '--out', str(out),
                          '--new-items', str(path)]) == 0
  ex = export_lib.load(out)
  assert ex.n_items == restored.dataset.n_items + 3
  assert ex.item_ids[-3:].tolist() == ['a', 'b', 'c']
  np.testing.assert_allclose(ex.item_emb[-3:], vectors, rtol=1e-6)


def test_grow_params_rows_of_features_and_of_ids():
  feats = np.arange(12, dtype=np.float32).reshape(6, 2)  # 4 old + 2 new
  trained = {'feature_table': feats[:4] + 100, 'ids': np.ones((4, 3)),
             'w': np.full((2, 2), 7.0)}
  fresh = {'feature_table': feats.copy(), 'ids': np.full((6, 3), 5.0),
           'w': np.zeros((2, 2))}
  grown = cold.grow_params(trained, fresh, 4, 2, (feats,))
  np.testing.assert_array_equal(grown['feature_table'],
                                np.concatenate([feats[:4] + 100, feats[4:]]))
  np.testing.assert_array_equal(grown['ids'][4:], 0)
  np.testing.assert_array_equal(grown['w'], trained['w'])
  with pytest.raises(errors.CheckpointError, match="'odd'.*cannot embed"):
    cold.grow_params({'odd': np.ones((4, 3))}, {'odd': np.ones((4, 4))}, 4, 2,
                     (feats,))


def test_new_items_refused_for_id_only_models_and_bad_files(run, tmp_path):
  assert {n for n in registry.names()
          if not registry.get(n).item_features} == {'mfbpr', 'lightgcn',
                                                    'layergcn'}
  restored = evaluate_lib.load(run)
  d_v, d_t = restored.dataset.dim_v, restored.dataset.dim_t
  good = {'feat_v': np.ones((2, d_v)), 'feat_t': np.ones((2, d_t))}
  cases = {
      'no feat_t': ({'feat_v': good['feat_v']}, 'no array feat_t'),
      'wrong dim': (dict(good, feat_t=np.ones((2, d_t + 1))), 'feat_t has'),
      'n differs': (dict(good, feat_t=np.ones((3, d_t))), 'same n'),
      'nan': (dict(good, feat_v=np.full((2, d_v), np.nan)), 'NaN'),
      'huge': (dict(good, feat_v=np.full((2, d_v), 1e20)), 'magnitude'),
      'ids repeat': (dict(good, ids=np.array(['x', 'x'])), 'distinct ids'),
  }
  for name, (arrays, message) in cases.items():
    path = tmp_path / f'{name}.npz'
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
      cold.embed_new_items(restored, path)
  np.savez(tmp_path / 'clash.npz', ids=np.array(['0', 'z']), **good)
  with pytest.raises(DataError, match='items of the dataset already'):
    export_lib.build(restored, new_items=tmp_path / 'clash.npz')
  restored.config.model = 'lightgcn'
  with pytest.raises(errors.ConfigError, match='ID embeddings only'):
    cold.embed_new_items(restored, tmp_path / 'clash.npz')


# The service, as a real process on loopback.

def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _call(port, path, body=None):
  """(status, JSON body) of GET path, or POST body (bytes or JSON-able)."""
  data = None if body is None else (
      body if isinstance(body, bytes) else json.dumps(body).encode())
  req = urllib.request.Request(f'http://127.0.0.1:{port}{path}', data=data)
  try:
    with urllib.request.urlopen(req, timeout=30) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


@pytest.fixture(scope='module')
def service(run, exported, tmp_path_factory):
  pytest.importorskip('fastapi', reason='fastapi and uvicorn (serve extra)')
  ex = export_lib.load(exported)
  folder = tmp_path_factory.mktemp('service')
  _write_maps(folder / 'maps', ex.n_users, ex.n_items)
  out = folder / 'export'
  assert export_lib.main(['--workdir', str(run), '--out', str(out),
                          '--id-maps', str(folder / 'maps')]) == 0
  port = _free_port()
  log = open(folder / 'server.log', 'w+')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'mentor_jax.serving.server', '--export',
       str(out), '--port', str(port), '--batch-window-ms', '50'],
      cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  deadline = time.time() + 120
  while True:
    try:
      if _call(port, '/health') == (200, {'status': 'ok'}):
        break
    except OSError:
      pass
    if proc.poll() is not None or time.time() > deadline:
      log.seek(0)
      pytest.fail(f'the server did not start:\n{log.read()}')
    time.sleep(0.2)
  yield port, export_lib.load(out)
  proc.terminate()
  proc.wait(timeout=30)
  log.seek(0)
  assert 'Traceback' not in log.read()


def test_service_recommends_as_the_index(service):
  port, ex = service
  index = index_lib.ExactIndex(ex.item_emb)
  rows = [0, 7, 59]
  ids, scores = index.search(ex.user_emb[rows], 5, [ex.seen(r) for r in rows])
  for row, want_ids, want_scores in zip(rows, ids, scores):
    status, body = _call(port, f'/recommend?user={ex.user_ids[row]}&k=5')
    assert status == 200
    assert body['user'] == ex.user_ids[row]
    assert body['items'] == ex.item_ids[want_ids].tolist()
    np.testing.assert_allclose(body['scores'], want_scores, rtol=1e-6)
    assert not set(body['items']) & set(ex.item_ids[ex.seen(row)].tolist())
  status, body = _call(port, '/recommend', {
      'users': [str(ex.user_ids[r]) for r in rows], 'k': 5})
  assert status == 200
  assert [r['items'] for r in body['results']] == [
      ex.item_ids[i].tolist() for i in ids]
  # Item to item: the nearest by inner product, never the item itself.
  status, body = _call(port, f'/similar?item={ex.item_ids[4]}&k=3')
  want, _ = _numpy_top_k(ex.item_emb[4:5], ex.item_emb, 3, [[4]])
  assert status == 200 and body['items'] == ex.item_ids[want[0]].tolist()
  status, info = _call(port, '/info')
  assert status == 200 and info['model'] == 'vbpr'
  assert info['index'] == 'exact' and info['n_items'] == ex.n_items
  assert info['metrics']['test'] == ex.manifest['metrics']['test']


def test_service_batches_concurrent_requests(service):
  port, ex = service
  before = _call(port, '/info')[1]['batching']
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    answers = list(pool.map(
        lambda u: _call(port, f'/recommend?user={u}&k=3'), ex.user_ids[:32]))
  assert all(status == 200 for status, _ in answers)
  after = _call(port, '/info')[1]['batching']
  requests = after['requests'] - before['requests']
  calls = after['index_calls'] - before['index_calls']
  assert requests == 32 and calls < requests, (calls, requests)


@pytest.mark.parametrize('method, path, body, status, field', [
    ('GET', '/recommend?user=nobody', None, 404, 'user'),
    ('GET', '/recommend', None, 400, 'user'),
    ('GET', '/recommend?user={u}&k=0', None, 400, 'k'),
    ('GET', '/recommend?user={u}&k=abc', None, 400, 'k'),
    ('GET', '/recommend?user={u}&k=100000', None, 400, 'k'),
    ('GET', '/similar?item=nothing', None, 404, 'item'),
    ('GET', '/similar?item={i}&k=40', None, 400, 'k'),
    ('POST', '/recommend', b'{"users": [1,', 400, 'body'),
    ('POST', '/recommend', b'\xff\xfe', 400, 'body'),
    ('POST', '/recommend', [1, 2], 400, 'body'),
    ('POST', '/recommend', {'users': 5}, 400, 'users'),
    ('POST', '/recommend', {'users': []}, 400, 'users'),
    ('POST', '/recommend', {'users': [1.5]}, 400, 'users'),
    ('POST', '/recommend', {'users': ['{u}'], 'k': '3'}, 400, 'k'),
    ('POST', '/recommend', {'users': ['{u}'], 'extra': 1}, 400, 'extra'),
    ('POST', '/recommend', {'users': ['{u}', 'ghost']}, 404, 'users'),
    ('GET', '/nothing/here', None, 404, None),
])
def test_service_bad_input_is_a_4xx_naming_the_field(service, method, path,
                                                      body, status, field):
  port, ex = service
  fill = lambda s: s.replace('{u}', ex.user_ids[0]).replace('{i}',
                                                            ex.item_ids[0])
  path = fill(path)
  if isinstance(body, dict):
    body = json.loads(fill(json.dumps(body)))
  if method == 'POST' and body is None:
    body = b''
  got_status, got = _call(port, path, body)
  assert (got_status, got.get('field')) == (status, field), got
  assert isinstance(got['error'], str) and 'Traceback' not in got['error']

"""Tests of data_prep against independent numpy/pandas references."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import __main__ as cli
from data_prep import convert as convert_lib
from data_prep import format as fmt
from data_prep import graphs
from data_prep import synthetic
from data_prep.format import DataError

# A valid toy table: 3 users, 5 items (item 4 only in test -> degree 0);
# user 0 has a duplicate train row.
TOY_ROWS = [(0, 0, 0), (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
            (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 4, 2),
            (2, 3, 0), (2, 2, 0), (2, 1, 1), (2, 0, 2)]
TOY_FEAT = np.arange(5 * 3, dtype=np.float32).reshape(5, 3) % 7 + 1


def _pandas_counts(path: Path) -> dict[str, int]:
  """MMRec's counting, written independently with pandas groupby/isin."""
  df = pd.read_csv(path, sep='\t')
  train_users = df.loc[df.x_label == 0, 'userID'].unique()
  kept = df[(df.x_label == 0) | df.userID.isin(train_users)]
  return {'n_users': int(df.userID.max()) + 1,
          'n_items': int(df.itemID.max()) + 1,
          'n_train': int((kept.x_label == 0).sum()),
          'n_valid': int((kept.x_label == 1).sum()),
          'n_test': int((kept.x_label == 2).sum()),
          'n_cold_start_dropped': len(df) - len(kept)}


def _check_against_pandas(npz: Path, inter: Path) -> None:
  arrays, meta = fmt.load_npz(npz)
  want = _pandas_counts(inter)
  assert {k: meta[k] for k in want} == want
  df = pd.read_csv(inter, sep='\t')
  train = df[df.x_label == 0]
  per_user = train.groupby('userID').size().reindex(
      range(want['n_users']), fill_value=0).to_numpy()
  np.testing.assert_array_equal(np.diff(arrays['train_indptr']), per_user)
  np.testing.assert_array_equal(arrays['train_user'], train.userID)
  np.testing.assert_array_equal(arrays['neg_items'],
                                np.unique(train.itemID))


# ---------------------------------------------------------------- real data


def test_convert_tiktok_counts(shared_data, tmp_path):
  src = shared_data / 'tiktok'
  out = tmp_path / 'tiktok.npz'
  meta = convert_lib.convert(src, out, t_feat='audio_feat.npy')
  _check_against_pandas(out, src / 'tiktok.inter')
  assert meta['n_cold_start_dropped'] == 10  # 10 users lack train rows.
  assert meta['feat_t']['file'] == 'audio_feat.npy'
  assert meta['inter_sha256'] == ('270095c33bea038c9e982332beba06873239ed0e'
                                  '68978c34babf710befd26bd8')


def test_convert_baby_synth_features_cli(shared_data, tmp_path, capsys):
  out = tmp_path / 'baby.npz'
  # Small synthetic dims keep the kNN fast; the counts are what is tested.
  rc = cli.main(['convert', '--src', str(shared_data / 'baby'), '--out',
                 str(out), '--synth-features', '3', '--synth-dims', '64',
                 '32'])
  assert rc == 0 and 'U=19445 I=7050' in capsys.readouterr().out
  _check_against_pandas(out, shared_data / 'baby' / 'baby.inter')
  arrays, meta = fmt.load_npz(out)
  assert (meta['n_train'], meta['n_valid'], meta['n_test']) == (
      118551, 20559, 21682)
  assert meta['feat_v'] == {'file': None, 'dim': 64, 'sha256': None,
                            'generated': True, 'seed': 3}
  assert arrays['knn_v'].shape == (7050, 40)


# ------------------------------------------------------------------ graphs


def _dense_norm_adj(user, item, n_users, n_items) -> np.ndarray:
  n = n_users + n_items
  a = np.zeros((n, n))
  np.add.at(a, (user, n_users + item), 1.0)
  a = a + a.T
  d = a.sum(1)
  d_inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0.0)
  return d_inv[:, None] * a * d_inv[None, :]


def _csr_to_dense(indptr, indices, values, n) -> np.ndarray:
  rows = np.repeat(np.arange(n), np.diff(indptr))
  out = np.zeros((n, n))
  np.add.at(out, (rows, indices), values)
  return out


@pytest.mark.parametrize('seed', [None, 0, 1])
def test_normalized_adjacency_matches_dense(seed):
  if seed is None:  # Hand case: duplicate (0, 0) and zero-degree item 4.
    user, item, n_users, n_items = (np.array([0, 0, 0, 1, 1, 2, 2]),
                                    np.array([0, 0, 1, 1, 2, 3, 2]), 3, 5)
  else:
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 20
    user, item = rng.integers(0, 30, 200), rng.integers(0, 18, 200)
  indptr, indices, values = graphs.normalized_adjacency(
      user, item, n_users, n_items)
  n = n_users + n_items
  assert (indptr.dtype, indices.dtype, values.dtype) == (
      np.int32, np.int32, np.float32)
  assert indptr.shape == (n + 1,) and indices.size == 2 * user.size
  np.testing.assert_allclose(_csr_to_dense(indptr, indices, values, n),
                             _dense_norm_adj(user, item, n_users, n_items),
                             rtol=1e-6)
  rows = np.repeat(np.arange(n), np.diff(indptr))
  assert np.all((np.diff(indices) >= 0) | (np.diff(rows) != 0))
  assert np.all(np.diff(indptr)[n_users + item.max() + 1:] == 0)  # Unused.
  if seed is None:  # The multi-edge is two entries of 1/sqrt(3 * 2).
    np.testing.assert_allclose(values[:2], 1 / np.sqrt(6), rtol=1e-6)
    assert list(indices[:3]) == [3, 3, 4]


def test_knn_hand_ties():
  # Exactly representable cosines: item 2 duplicates 0, item 4 duplicates 1,
  # item 5 is a zero row (similarity 0 to all).
  feat = np.array([[1, 0], [0, 1], [1, 0], [.6, .8], [0, 1], [0, 0]])
  knn = graphs.knn_cosine(feat, 4)
  np.testing.assert_array_equal(knn, [[0, 2, 3, 1], [1, 4, 3, 0],
                                      [0, 2, 3, 1], [3, 1, 4, 0],
                                      [1, 4, 3, 0], [0, 1, 2, 3]])


@pytest.mark.parametrize('budget', [1, 10_000, 1 << 30])
def test_knn_matches_bruteforce(budget):
  rng = np.random.default_rng(0)
  feat = rng.standard_normal((70, 12)).astype(np.float32)
  feat[[10, 40, 55]] = feat[5]  # Ties straddling the k-th place.
  feat[60] = 0
  k = 7
  normed = feat / np.maximum(np.linalg.norm(feat, axis=1, keepdims=True),
                             1e-30)
  sim = normed.astype(np.float64) @ normed.T.astype(np.float64)
  sim = np.round(sim, 6)  # Make float32 duplicates tie exactly here too.
  want = np.argsort(-sim, axis=1, kind='stable')[:, :k]
  got = graphs.knn_cosine(feat, k, memory_budget=budget)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert list(got[40, :4]) == [5, 10, 40, 55]  # Lower id first in a tie.


# ------------------------------------------------------- convert and format


def test_convert_toy_roundtrip(mmrec_folder, tmp_path):
  src = mmrec_folder(TOY_ROWS, feat_v=TOY_FEAT, feat_t=TOY_FEAT[:, :2])
  out = tmp_path / 'toy.npz'
  meta = convert_lib.convert(src, out, knn_k=40)
  arrays, loaded = fmt.load_npz(out)
  assert loaded == meta and meta['knn_k'] == 5  # Clamped to I.
  _check_against_pandas(out, src / 'toy.inter')
  np.testing.assert_array_equal(arrays['train_items'], [0, 0, 1, 1, 2, 2, 3])
  np.testing.assert_array_equal(arrays['test_indptr'], [0, 1, 2, 3])
  np.testing.assert_array_equal(arrays['test_items'], [3, 4, 0])
  np.testing.assert_array_equal(arrays['neg_items'], [0, 1, 2, 3])
  assert meta['feat_v']['sha256'] == convert_lib.sha256_file(
      src / 'image_feat.npy')
  assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ['toy.npz']


def test_cold_start_rows_dropped(mmrec_folder, tmp_path):
  rows = TOY_ROWS + [(3, 1, 1), (3, 2, 2), (3, 0, 2)]  # User 3: no train.
  meta = convert_lib.convert(mmrec_folder(rows, feat_v=TOY_FEAT,
                                          feat_t=TOY_FEAT),
                             tmp_path / 'o.npz')
  assert (meta['n_users'], meta['n_valid'], meta['n_test'],
          meta['n_cold_start_dropped']) == (4, 3, 3, 3)


def _rows_with(i: int, row: tuple) -> list:
  rows = list(TOY_ROWS)
  rows[i] = row
  return rows


NAN_FEAT = TOY_FEAT.copy()
NAN_FEAT[2, 1] = np.nan
BAD_INPUTS = {
    'missing_inter': (None, {}, r'toy\.inter: no such file'),
    'missing_column': (TOY_ROWS, {'columns': ('userID', 'itemID', 'label')},
                       r'column\(s\) x_label missing'),
    'non_integer_id': (_rows_with(3, (0, 'abc', 1)), {},
                       r'itemID: expected integers, found "abc" on line 5'),
    'fractional_id': (_rows_with(0, (0.5, 0, 0)), {},
                      r'userID: expected integers, found "0\.5" on line 2'),
    'negative_id': (_rows_with(2, (0, -1, 0)), {},
                    r'itemID: expected ids >= 0, found -1 on line 4'),
    'bad_label': (_rows_with(2, (0, 1, 3)), {},
                  r'x_label: expected 0, 1 or 2, found 3'),
    'few_feat_rows': (TOY_ROWS, {'feat_v': TOY_FEAT[:4]},
                      r'image_feat\.npy: expected 5 rows .* found 4'),
    'many_feat_rows': (TOY_ROWS, {'feat_v': np.ones((6, 3))},
                       r'image_feat\.npy: expected 5 rows .* found 6'),
    'nan_feature': (TOY_ROWS, {'feat_t': NAN_FEAT},
                    r'text_feat\.npy: NaN or inf in row 2'),
    'missing_feature': (TOY_ROWS, {'feat_t': None},
                        r'text_feat\.npy: no such file'),
    'empty_valid': ([r for r in TOY_ROWS if r[2] != 1], {},
                    r'the valid split \(x_label == 1\) is empty'),
    'empty_test_after_cold_start': (
        [r for r in TOY_ROWS if r[2] != 2] + [(3, 0, 2)], {},
        r'test split .* empty after dropping 1 cold-start rows'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_errors(case, mmrec_folder, tmp_path):
  rows, kw, pattern = BAD_INPUTS[case]
  kw = {'feat_v': TOY_FEAT, 'feat_t': TOY_FEAT, **kw}
  src = mmrec_folder(rows, **kw)
  out = tmp_path / 'out' / 'toy.npz'
  with pytest.raises(DataError, match=pattern):
    convert_lib.convert(src, out)
  assert not out.parent.exists() or not any(out.parent.iterdir())
  assert cli.main(['convert', '--src', str(src), '--out', str(out)]) == 3


@pytest.fixture
def good_npz(mmrec_folder, tmp_path) -> Path:
  out = tmp_path / 'good.npz'
  convert_lib.convert(mmrec_folder(TOY_ROWS, feat_v=TOY_FEAT,
                                   feat_t=TOY_FEAT), out, knn_k=3)
  return out


def _rewrite(path: Path, edit) -> None:
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  meta = json.loads(str(arrays['meta']))
  edit(arrays, meta)
  arrays['meta'] = np.array(json.dumps(meta))
  np.savez(path, **arrays)


@pytest.mark.parametrize('edit, pattern', [
    (lambda a, m: m.update(format_version=2),
     r'good\.npz: format_version 2, expected 1'),
    (lambda a, m: a.pop('knn_t'), r'required keys missing: knn_t'),
    (lambda a, m: a.update(knn_v=a['knn_v'][:, :2]),
     r'knn_v: expected shape \[5, 3\]'),
    (lambda a, m: a.update(train_indptr=a['train_indptr'][:-1]),
     r'train_indptr: expected 4 rows'),
    (lambda a, m: a.update(feat_v=a['feat_v'].astype(np.float64)),
     r'feat_v: expected dtype float32'),
    (lambda a, m: a.update(test_items=a['test_items'] + 5),
     r'test_items: expected values in \[0, 5\)'),
])
def test_load_npz_rejects(good_npz, edit, pattern):
  fmt.load_npz(good_npz)  # Valid before the edit.
  _rewrite(good_npz, edit)
  with pytest.raises(DataError, match=pattern):
    fmt.load_npz(good_npz)


def test_load_npz_missing_file(tmp_path):
  with pytest.raises(DataError, match=r'nope\.npz: no such file'):
    fmt.load_npz(tmp_path / 'nope.npz')


def test_save_npz_failure_leaves_nothing(tmp_path, monkeypatch):
  def broken_savez(f, **kw):
    f.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(fmt.np, 'savez', broken_savez)
  with pytest.raises(OSError):
    fmt.save_npz(tmp_path / 'x.npz', {'a': np.zeros(3)}, {})
  assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- synthetic


def _read_folder(folder: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_synthetic_deterministic(tmp_path):
  shape = synthetic.PRESETS['tiny']
  a, b, c = (tmp_path / n / 'tiny' for n in 'abc')
  for folder, seed in ((a, 0), (b, 0), (c, 1)):
    synthetic.generate(shape, folder, seed=seed)
  fa, fc = _read_folder(a), _read_folder(c)
  assert fa == _read_folder(b)
  assert sorted(fa) == ['image_feat.npy', 'synth_meta.json', 'text_feat.npy',
                        'tiny.inter']
  for name in ('tiny.inter', 'image_feat.npy', 'text_feat.npy'):
    assert fa[name] != fc[name]


def _check_synthetic(folder: Path, name: str, shape: synthetic.Shape) -> None:
  df = pd.read_csv(folder / f'{name}.inter', sep='\t')
  assert list(df.columns) == ['userID', 'itemID', 'rating', 'timestamp',
                              'x_label']
  assert len(df) == shape.n_inter
  assert set(df.userID) == set(range(shape.n_users))
  assert set(df.itemID) == set(range(shape.n_items))
  assert not df.duplicated(['userID', 'itemID']).any()
  # MMRec's split rule, per user, recomputed with pandas.
  n = df.groupby('userID').size()
  assert n.min() >= 3
  vt = np.where(n < 10, 2, (0.2 * n).astype(int))
  want = pd.DataFrame({0: n - vt, 1: vt // 2, 2: vt - vt // 2})
  got = df.groupby(['userID', 'x_label']).size().unstack(fill_value=0)
  np.testing.assert_array_equal(got[[0, 1, 2]].to_numpy(), want.to_numpy())
  assert np.load(folder / 'image_feat.npy').shape == (shape.n_items,
                                                      shape.dim_v)
  assert np.load(folder / 'text_feat.npy').dtype == np.float32


@pytest.mark.parametrize('preset', ['tiny', 'small'])
def test_synthetic_presets_exact(preset, tmp_path):
  shape = synthetic.PRESETS[preset]
  synthetic.generate(shape, tmp_path / preset, seed=0)
  _check_synthetic(tmp_path / preset, preset, shape)


def test_synthetic_baby_counts_exact(tmp_path):
  # Baby's exact sizes, with small feature dims to keep the test fast.
  shape = synthetic.PRESETS['baby']
  shape = dataclasses.replace(shape, dim_v=8, dim_t=8)
  assert (shape.n_users, shape.n_items, shape.n_inter) == (19445, 7050,
                                                           160792)
  synthetic.generate(shape, tmp_path / 'baby', seed=0)
  _check_synthetic(tmp_path / 'baby', 'baby', shape)


def test_synthetic_features_carry_signal(tmp_path):
  # Items co-interacted by a user are more similar than random pairs, as
  # for the real TikTok features (see shared/data/tiktok/README.md).
  synthetic.generate(synthetic.PRESETS['small'], tmp_path / 's', seed=0)
  df = pd.read_csv(tmp_path / 's' / 's.inter', sep='\t')
  first = df.groupby('userID').itemID.first()
  pairs = df.merge(first.rename('other'), left_on='userID',
                   right_index=True)
  pairs = pairs[pairs.itemID != pairs.other]
  rng = np.random.default_rng(0)
  for file in ('image_feat.npy', 'text_feat.npy'):
    f = np.load(tmp_path / 's' / file)
    f = f - f.mean(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    co = np.mean(np.sum(f[pairs.itemID] * f[pairs.other], axis=1))
    r = rng.integers(0, len(f), (2, 20000))
    rand = np.mean(np.sum(f[r[0]] * f[r[1]], axis=1))
    assert co > rand + 0.025, (file, co, rand)


def test_synth_cli_with_npz(tmp_path, capsys):
  out, npz = tmp_path / 'tiny_ds', tmp_path / 'tiny.npz'
  rc = cli.main(['synth', '--preset', 'tiny', '--out', str(out), '--seed',
                 '2', '--scale', '0.5', '--npz', str(npz)])
  assert rc == 0
  _, meta = fmt.load_npz(npz)
  assert meta['n_users'] == 30 and meta['name'] == 'tiny_ds'
  _check_against_pandas(npz, out / 'tiny_ds.inter')
  assert 'U=30 I=40' in capsys.readouterr().out

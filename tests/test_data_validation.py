"""One validation layer for data (issue 12, section 3).

Every bad input to `data_prep convert` and every damaged `.npz` gives a
DataError naming the file and field (the CLI: one `error:` line, exit 3,
nothing written), never another exception; property-based tests
(hypothesis) check that for the `.inter` parser and the `.npz` loader.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import conftest
from data_prep import __main__ as cli
from data_prep import convert as convert_lib
from data_prep import format as fmt
from data_prep import graphs
from data_prep import importer
from data_prep import inter
from data_prep.format import DataError

ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 1, 0), (1, 2, 0),
        (1, 0, 1), (1, 4, 2), (2, 3, 0), (2, 2, 0), (2, 1, 1), (2, 0, 2)]
FEAT = np.arange(15, dtype=np.float32).reshape(5, 3) % 7 + 1
# tmp_path is reused across examples on purpose: each example rewrites it.
HYPOTHESIS = settings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow,
                           HealthCheck.function_scoped_fixture])


def _folder(tmp_path: Path, rows=ROWS, **kw) -> Path:
  kw = {'feat_v': FEAT, 'feat_t': FEAT, **kw}
  return conftest.write_mmrec_folder(tmp_path / 'toy', rows, **kw)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


# ------------------------------------------------------- convert, by CLI


def _edit_inter(content: bytes):
  def edit(src: Path) -> None:
    (src / 'toy.inter').write_bytes(content)
  return edit


def _feature_file(make):
  def edit(src: Path) -> None:
    make(src / 'image_feat.npy')
  return edit


CONVERT_CASES = {
    'empty_inter': (_edit_inter(b''), [], r'toy\.inter: empty file'),
    'non_utf8_inter': (
        _edit_inter(b'userID\titemID\tx_label\n0\t0\t0\n0\t\xff\xfe\t0\n'),
        [], r'toy\.inter: expected UTF-8 text, found the byte 0xff on line 3'),
    'npz_renamed_npy': (
        _feature_file(lambda p: np.savez(open(p, 'wb'), a=FEAT)), [],
        r'image_feat\.npy: is a \.npz archive; expected a single \.npy'),
    'empty_npy': (_feature_file(lambda p: p.write_bytes(b'')), [],
                  r'image_feat\.npy: not a plain numeric \.npy file'),
    'pickled_npy': (
        _feature_file(lambda p: np.save(p, np.array([{}], object))), [],
        r'image_feat\.npy: not a plain numeric \.npy file'),
    'knn_k_0': (None, ['--knn-k', '0'],
                r'knn_k \(--knn-k\): expected an integer >= 1, found 0'),
    'out_is_a_folder': (None, ['OUT_DIR'],
                        r'out\.npz: is a folder; expected the path of a file'),
    'huge_user_id': (
        _edit_inter(('userID\titemID\tx_label\n' + ''.join(
            f'{u}\t{i}\t{x}\n' for u, i, x in ROWS) +
                     '2000000000\t1\t0\n').encode()), [],
        r'toy\.inter: column userID: the largest id is 2000000000 \(line 14\) '
        r'but only 4 distinct ids occur'),
    'huge_item_id_with_synth_features': (
        _edit_inter(('userID\titemID\tx_label\n' + ''.join(
            f'{u}\t{i}\t{x}\n' for u, i, x in ROWS) +
                     '0\t300000000\t0\n').encode()),
        ['--synth-features', '0'], r'toy\.inter: column itemID: the largest '
        r'id is 300000000'),
    'zero_width_features': (
        _feature_file(lambda p: np.save(p, np.zeros((5, 0), np.float32))),
        [], r'image_feat\.npy: expected at least one feature column, found '
        r'shape \(5, 0\)'),
    'complex_features': (
        _feature_file(lambda p: np.save(p, FEAT + 1j)), [],
        r'image_feat\.npy: expected real features, found complex dtype '
        r'complex64'),
    'float64_beyond_float32': (
        _feature_file(lambda p: np.save(p, FEAT.astype(np.float64) * 1e300)),
        [], r'image_feat\.npy: NaN or inf in row 0'),
    # One near-float32-max entry per row: every cosine rounds to 1.0 and
    # every kNN list came out as items 0..k-1.
    'features_near_float32_max': (
        _feature_file(lambda p: np.save(
            p, np.concatenate([np.full((5, 1), 3e38, np.float32), FEAT], 1))),
        [], r'image_feat\.npy: value 3e\+38 in row 0 \(itemID 0\), column 0; '
        r'5 rows hold values of magnitude >= 1e\+15'),
}


@pytest.mark.parametrize('case', sorted(CONVERT_CASES))
def test_convert_bad_input_is_one_error_line(case, tmp_path, capsys):
  edit, extra, pattern = CONVERT_CASES[case]
  src = _folder(tmp_path)
  if edit is not None:
    edit(src)
  out = tmp_path / 'out' / 'out.npz'
  if extra == ['OUT_DIR']:
    out.mkdir(parents=True)
    extra = []
  rc = cli.main(['convert', '--src', str(src), '--out', str(out), *extra])
  err = capsys.readouterr().err
  assert rc == 3, err
  assert err.startswith('error: ') and 'Traceback' not in err, err
  assert re.search(pattern, err), err
  assert not out.is_file()
  assert not out.parent.exists() or not [
      p for p in out.parent.iterdir() if p.suffix == '.tmp']


def test_convert_knn_near_float32_max_and_near_zero(tmp_path):
  # Cosine similarity is scale-invariant: features times 3e37 (whose float32
  # squares overflow) or times 1e-30 (whose squares underflow) must give the
  # same neighbour lists as the features themselves.
  rng = np.random.default_rng(0)
  feat = rng.standard_normal((40, 8)).astype(np.float32)
  want = graphs.knn_cosine(feat, 6)
  assert not (want == np.arange(6)).all()
  for scale in (np.float32(3e37), np.float32(1e-30)):
    np.testing.assert_array_equal(graphs.knn_cosine(feat * scale, 6), want)
  mixed = feat.copy()
  mixed[::3] *= np.float32(1e38)  # Only some rows need the float64 norm.
  np.testing.assert_array_equal(graphs.knn_cosine(mixed, 6), want)


# ----------------------------------------------------------- the loader


@pytest.fixture
def good_arrays(tmp_path) -> dict[str, np.ndarray]:
  out = tmp_path / 'good.npz'
  convert_lib.convert(_folder(tmp_path), out, knn_k=3)
  with np.load(out) as z:
    return {k: z[k] for k in z.files}


def _set(key, index, value):
  def edit(a, m):
    a[key] = a[key].copy()
    a[key][index] = value
  return edit


def _meta(**fields):
  return lambda a, m: m.update(fields)


LOADER_CASES = [
    (_set('feat_v', (1, 1), np.nan),
     r'feat_v: expected finite values, found 1 NaN/inf, the first at index '
     r'\(1, 1\)'),
    (_set('feat_t', (4, 0), np.inf), r'feat_t: expected finite values'),
    (_set('feat_v', (2, 1), 3e38),
     r'feat_v: expected values below 1e\+15 in magnitude, found value '
     r'3e\+38 in row 2 \(itemID 2\), column 1; 1 rows hold'),
    (_set('adj_values', 0, np.nan), r'adj_values: expected finite values'),
    (_set('adj_values', 3, 2.0), r'adj_values: expected values in \(0, 1\]'),
    (lambda a, m: (a.update(feat_v=np.zeros((5, 0), np.float32)),
                   m['feat_v'].update(dim=0)),
     r'meta\.feat_v: expected an object with an integer dim >= 1'),
    (lambda a, m: a.update(feat_v=a['feat_v'].astype(np.complex64)),
     r'feat_v: expected dtype float32, found dtype complex64'),
    (_set('train_user', 0, 2), r'train_indptr: expected the per-user counts'),
    (_set('adj_indices', 0, 99), r'adj_indices: expected values in \[0, 8\)'),
    (_set('knn_t', (0, 0), -1), r'knn_t: expected values in \[0, 5\)'),
    (_meta(n_users='3'), r"meta\.n_users: expected an integer >= 1, found "
     r"'3'"),
    (_meta(n_users=-1), r'meta\.n_users: expected an integer >= 1'),
    (_meta(knn_k=True), r'meta\.knn_k: expected an integer >= 1'),
    (_meta(n_items=2**31), r'meta\.n_users \+ meta\.n_items: expected < 2\^31'),
    (_meta(format_version='1'), r"format_version '1', expected 1"),
    (lambda a, m: a.update(meta=np.array(json.dumps([1, 2]))),
     r'meta: expected a JSON object, found list'),
    (lambda a, m: a.update(meta=np.arange(3)),
     r'meta: expected a 0-d unicode string'),
    (lambda a, m: a.update(neg_items=np.zeros(0, np.int32)),
     r'neg_items: expected at least one item'),
    (lambda a, m: a.update(extra=np.array([{}], object)),
     r'extra: expected a plain numeric or string array, found dtype object'),
]


@pytest.mark.parametrize('edit, pattern', LOADER_CASES)
def test_loader_refuses(good_arrays, tmp_path, edit, pattern):
  a = dict(good_arrays)
  original = a['meta']
  meta = json.loads(str(original))
  edit(a, meta)
  if a['meta'] is original:  # The edit changed the meta dict, not the key.
    a['meta'] = np.array(json.dumps(meta))
  path = tmp_path / 'bad.npz'
  path.write_bytes(_npz_bytes(a))
  with pytest.raises(DataError, match=pattern) as e:
    fmt.load_npz(path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize('damage, pattern', [
    (lambda b: b[:2000], r'not a readable \.npz, the file is damaged'),
    (lambda b: b'', r'not a readable \.npz'),
    (lambda b: b'\x93NUMPY' + b[6:100], r'not a readable \.npz'),
    (lambda b: b[:len(b) // 2] + bytes(64) + b[len(b) // 2 + 64:],
     r'bad\.npz: '),
])
def test_damaged_npz_names_the_path(good_arrays, tmp_path, damage, pattern):
  path = tmp_path / 'bad.npz'
  path.write_bytes(damage(_npz_bytes(good_arrays)))
  with pytest.raises(DataError, match=pattern):
    fmt.load_npz(path)
  with pytest.raises(DataError, match='is a folder'):
    fmt.load_npz(tmp_path)


def test_huge_declared_shape_is_refused_before_allocating(good_arrays,
                                                          tmp_path):
  # A header that declares 10^10 float32 (40 GB) over 60 bytes of data: the
  # size check fails before numpy would allocate the array.
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {'descr': '<f4', 'fortran_order': False,
               'shape': (10**10,)})
  path = tmp_path / 'bad.npz'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('feat_v.npy', header.getvalue() + bytes(60))
  with pytest.raises(DataError, match=r'feat_v: the header declares shape '
                     r'\(10000000000,\) float32 \(40000000000 bytes\) but the '
                     r'archive holds 60 bytes'):
    fmt.load_npz(path)


# ------------------------------------------------- property-based tests

_CELLS = st.sampled_from(['0', '1', '2', '3', '-1', '1.0', '1.5', 'abc', '',
                          ' 2', '9' * 12, '1e3', 'nan', 'inf', '"', '0x1',
                          '2147483646', '\u00e9'])
_NAMES = st.sampled_from(['userID', 'itemID', 'x_label', 'rating', 'junk',
                          ''])


@st.composite
def _inter_files(draw) -> bytes:
  """Tables that are often valid and often broken in one place."""
  if draw(st.booleans()):
    return draw(st.binary(max_size=200))
  header = draw(st.lists(_NAMES, min_size=0, max_size=5))
  if draw(st.booleans()):
    header = ['userID', 'itemID', 'x_label'] + header
  n = draw(st.integers(0, 12))
  valid = st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 2))
  lines = ['\t'.join(header)]
  for _ in range(n):
    if draw(st.integers(0, 4)):
      row = [str(v) for v in draw(valid)]
      row += [draw(_CELLS) for _ in header[3:]]
    else:
      row = draw(st.lists(_CELLS, max_size=len(header) + 1))
    lines.append('\t'.join(row))
  text = '\n'.join(lines) + draw(st.sampled_from(['', '\n', '\n\n']))
  data = text.encode()
  if draw(st.integers(0, 9)) == 0 and data:  # A stray byte somewhere.
    at = draw(st.integers(0, len(data) - 1))
    data = data[:at] + bytes([draw(st.integers(128, 255))]) + data[at + 1:]
  return data


@HYPOTHESIS
@given(data=_inter_files())
def test_inter_parser_valid_result_or_data_error(tmp_path, data):
  path = tmp_path / 'h.inter'
  path.write_bytes(data)
  try:
    got = inter.read_inter(path)
  except DataError as e:
    assert str(path) in str(e)
    return
  # A valid result keeps the contract that convert relies on.
  assert got.n_users == got.user.max() + 1 or got.user.max() < got.n_users
  assert (got.user >= 0).all() and (got.item >= 0).all()
  assert set(np.unique(got.label)) == {0, 1, 2}
  train_users = set(got.user[got.label == 0])
  assert set(got.user) <= train_users  # Cold-start rows were dropped.


@HYPOTHESIS
@given(data=_inter_files(),
       fmt_name=st.sampled_from(importer.FORMATS),
       split=st.sampled_from(importer.SPLITS))
def test_import_reader_valid_result_or_data_error(tmp_path, data, fmt_name,
                                                  split):
  path = tmp_path / 'h.inter'
  path.write_bytes(data)
  try:
    rows = importer.read_source(fmt_name, path, split=split,
                                user_column='userID', item_column='itemID',
                                sep='\t')
    importer.import_dataset(rows, tmp_path / 'out', 'h', split=split,
                            kcore=0, force=True)
  except DataError as e:
    assert str(path) in str(e) or 'split' in str(e)
    return
  assert len(rows) > 0


def _mutate_arrays(draw, a: dict[str, np.ndarray]) -> None:
  keys = sorted(a)
  key = draw(st.sampled_from(keys))
  kind = draw(st.integers(0, 5))
  if kind == 0:
    del a[key]
  elif kind == 1 and key != 'meta':
    a[key] = a[key].astype(draw(st.sampled_from(
        [np.float64, np.int64, np.float16, np.uint8, np.complex64, bool,
         np.int32, np.float32])))
  elif kind == 2 and a[key].size:
    a[key] = a[key].reshape(-1)[:draw(st.integers(0, a[key].size))]
  elif kind == 3 and a[key].size and a[key].dtype.kind in 'fiu':
    x = a[key].copy()
    flat = x.reshape(-1)
    value = draw(st.sampled_from(
        [-1, 0, 1, 7, 2**31 - 1, np.nan, np.inf, 3e38]
        if x.dtype.kind == 'f' else [-1, 0, 1, 7, 99, 2**31 - 1]))
    with np.errstate(all='ignore'):  # Wraps or overflows in small dtypes.
      flat[draw(st.integers(0, flat.size - 1))] = np.array(value).astype(
          x.dtype)
    a[key] = x
  elif kind == 4 and 'meta' in a:
    try:
      meta = json.loads(str(a['meta']))
    except ValueError:
      return  # An earlier mutation already broke the meta string.
    if not isinstance(meta, dict) or not meta:
      return
    field = draw(st.sampled_from(sorted(meta)))
    meta[field] = draw(st.one_of(
        st.none(), st.booleans(), st.integers(-3, 2**40), st.text(max_size=3),
        st.floats(allow_nan=True), st.lists(st.integers(), max_size=2),
        st.dictionaries(st.just('dim'), st.integers(-1, 5))))
    a['meta'] = np.array(json.dumps(meta))
  else:
    a[key] = np.zeros(draw(st.lists(st.integers(0, 3), max_size=3)),
                      a[key].dtype)


@HYPOTHESIS
@given(data=st.data())
def test_npz_loader_valid_result_or_data_error(tmp_path, good_arrays, data):
  draw = data.draw
  a = dict(good_arrays)
  for _ in range(draw(st.integers(0, 3))):
    _mutate_arrays(draw, a)
  raw = _npz_bytes(a)
  for _ in range(draw(st.integers(0, 2))):  # Byte-level damage.
    if draw(st.booleans()):
      raw = raw[:draw(st.integers(0, len(raw)))]
    elif raw:
      at = draw(st.integers(0, len(raw) - 1))
      raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
  path = tmp_path / 'h.npz'
  path.write_bytes(raw)
  try:
    arrays, meta = fmt.load_npz(path)
  except DataError as e:
    assert str(path) in str(e)
    return
  # Accepted: the contract holds (what the model indexes with is in range).
  n_users, n_items = meta['n_users'], meta['n_items']
  assert arrays['feat_v'].shape[0] == n_items and np.isfinite(
      arrays['feat_v']).all()
  assert arrays['train_indptr'].shape == (n_users + 1,)
  assert arrays['knn_v'].max() < n_items

"""`python -m data_prep import`: readers, k-core, ids, splits, bad input.

References are independent: pandas groupby/sample for MMRec's split rule,
a one-node-at-a-time k-core, hand-computed cases, and the real ML-100K
x_label of ../shared/data/ml-100k/ml100k.inter (its README gives the rule).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import __main__ as cli
from data_prep import convert as convert_lib
from data_prep import importer

README = Path(__file__).resolve().parents[1] / 'README.md'


def _write(path: Path, text: str | bytes) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text)
  return path


def _tsv(path: Path, header: list[str], rows: list[tuple]) -> Path:
  lines = ['\t'.join(header)] + ['\t'.join(map(str, r)) for r in rows]
  return _write(path, '\n'.join(lines) + '\n')


def _read_out(out: Path, name: str):
  inter = pd.read_csv(out / f'{name}.inter', sep='\t')
  users = pd.read_csv(out / 'u_id_mapping.csv', sep='\t', dtype=str)
  items = pd.read_csv(out / 'i_id_mapping.csv', sep='\t', dtype=str)
  return inter, users, items


# ------------------------------------------------------------------ k-core


def _kcore_reference(pairs: list[tuple[int, int]], k: int) -> set[int]:
  """Rows of the k-core, removing one under-degree node at a time."""
  alive = set(range(len(pairs)))
  while True:
    du, di = {}, {}
    for r in alive:
      u, i = pairs[r]
      du[u] = du.get(u, 0) + 1
      di[i] = di.get(i, 0) + 1
    weak = next((r for r in sorted(alive)
                 if du[pairs[r][0]] < k or di[pairs[r][1]] < k), None)
    if weak is None:
      return alive
    u, i = pairs[weak]
    node_is_user = du[u] < k
    alive = {r for r in alive
             if (pairs[r][0] != u if node_is_user else pairs[r][1] != i)}


def test_kcore_hand_case_cascades():
  # 2-core: user 2 has one row, so item 2 drops to one row and goes too,
  # which leaves user 3 with one row: three rounds, then a stable 2x2 block.
  pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (3, 2), (3, 3), (4, 3)]
  u, i = np.array(pairs).T
  keep, rounds = importer.kcore_mask(u, i, 2)
  assert np.flatnonzero(keep).tolist() == [0, 1, 2, 3]
  assert rounds >= 2
  assert importer.kcore_mask(u, i, 0)[0].all()
  assert not importer.kcore_mask(u, i, 3)[0].any()


@pytest.mark.parametrize('seed', range(4))
def test_kcore_matches_one_at_a_time_reference(seed):
  rng = np.random.default_rng(seed)
  n = 150
  u = rng.integers(0, 25, n)
  i = (rng.pareto(1.0, n) * 3).astype(int) % 30
  pairs = list(zip(u.tolist(), i.tolist()))
  for k in (2, 3, 4):
    keep, _ = importer.kcore_mask(u, i, k)
    assert set(np.flatnonzero(keep).tolist()) == _kcore_reference(pairs, k)
    if keep.any():  # The result really is a k-core.
      assert np.bincount(u[keep])[np.unique(u[keep])].min() >= k
      assert np.bincount(i[keep])[np.unique(i[keep])].min() >= k


def test_sorted_codes_numeric_and_string_order():
  uniq, codes = importer.sorted_codes(np.array(['10', '9', '2', '9', '007',
                                                '7']))
  assert uniq.tolist() == ['2', '007', '7', '9', '10']
  assert codes.tolist() == [4, 3, 0, 3, 1, 2]
  uniq, codes = importer.sorted_codes(np.array(['b2', 'a10', 'a9', 'b2']))
  assert uniq.tolist() == ['a10', 'a9', 'b2'] and codes.tolist() == [2, 0,
                                                                     1, 2]


# ------------------------------------------------------------------ splits


def _pandas_mmrec_split(df: pd.DataFrame, seed: int) -> pd.Series:
  """MMRec's rule as the dataset README states it, with pandas."""
  d = df.sample(frac=1, random_state=seed).sort_values('u', kind='stable')
  n = d.groupby('u').u.transform('size')
  rank = d.groupby('u').cumcount()
  vt = np.where(n < 10, 2, (0.2 * n).astype(int))
  label = np.where(rank < n - vt, 0, np.where(rank < n - vt + vt // 2, 1, 2))
  return pd.Series(label, index=d.index)


@pytest.mark.parametrize('seed', [0, 2024])
def test_random_split_matches_pandas_sample(seed):
  rng = np.random.default_rng(seed)
  user = np.repeat(np.arange(30), rng.integers(3, 40, 30))
  user = rng.permutation(user)
  order, label = importer.random_split(user, 30, seed)
  want = _pandas_mmrec_split(pd.DataFrame({'u': user}), seed)
  np.testing.assert_array_equal(order, want.index)
  np.testing.assert_array_equal(label, want.to_numpy())


def test_split_sizes_hand_cases():
  # n = 5: 3/1/1; n = 12: vt = int(2.4) = 2 -> 10/1/1; n = 25: vt = 5 ->
  # 20/2/3; n = 2: 0/1/1.
  user = np.repeat([0, 1, 2, 3], [5, 12, 25, 2])
  label = importer.split_labels(user, 4)
  got = pd.crosstab(user, label).to_numpy().tolist()
  assert got == [[3, 1, 1], [10, 1, 1], [20, 2, 3], [0, 1, 1]]


def test_time_split_oldest_train_newest_test_ties_in_file_order():
  user = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1])
  ts = np.array([50, 3, 10, 10, 1, 2, 99, 5, 4, 20])
  order, label = importer.time_split(user, ts, 2)
  # User 0 rows by time: 4 (t1), 5 (t2), 1 (t3), 8 (t4), 7 (t5) -> 3/1/1.
  # User 1: 2 and 3 tie at t10 (file order), 9 (t20), 0 (t50), 6 (t99).
  assert order.tolist() == [4, 5, 1, 8, 7, 2, 3, 9, 0, 6]
  assert label.tolist() == [0, 0, 0, 1, 2, 0, 0, 0, 1, 2]


# ------------------------------------------------------- import end to end


SMALL = [('u1', 'i1', 5, 100), ('u1', 'i2', 4, 101), ('u1', 'i3', 2, 102),
         ('u1', 'i4', 5, 103), ('u2', 'i1', 3, 104), ('u2', 'i2', 5, 105),
         ('u2', 'i3', 4, 106), ('u2', 'i4', 1, 107), ('u3', 'i1', 5, 108),
         ('u3', 'i2', 5, 109), ('u3', 'i4', 4, 110), ('u3', 'i5', 5, 111),
         ('u1', 'i1', 1, 112)]  # Repeated pair: dropped, first row kept.


def test_csv_import_writes_mmrec_folder_and_mappings(tmp_path):
  src = _tsv(tmp_path / 'r.tsv', ['user', 'item', 'stars', 'time'], SMALL)
  out = tmp_path / 'out'
  rc = cli.main(['import', '--format', 'csv', '--src', str(src), '--out',
                 str(out), '--name', 'small', '--user-column', 'user',
                 '--item-column', 'item', '--rating-column', 'stars',
                 '--time-column', 'time', '--kcore', '0', '--split', 'time'])
  assert rc == 0
  inter, users, items = _read_out(out, 'small')
  assert list(inter.columns) == ['userID', 'itemID', 'rating', 'timestamp',
                                 'x_label']
  assert list(users.columns) == ['user', 'userID']
  assert list(items.columns) == ['item', 'itemID']
  assert users.user.tolist() == ['u1', 'u2', 'u3']
  assert items.item.tolist() == ['i1', 'i2', 'i3', 'i4', 'i5']
  assert len(inter) == 12  # The repeated (u1, i1) row is gone.
  back = inter.merge(users.astype({'userID': int}), on='userID').merge(
      items.astype({'itemID': int}), on='itemID')
  first = back[(back.user == 'u1') & (back.item == 'i1')]
  assert first.rating.tolist() == [5] and first.timestamp.tolist() == [100]
  # 4 rows per user: 2/1/1, the newest row of each user is test.
  newest = back.loc[back.groupby('user').timestamp.idxmax()]
  assert (newest.x_label == 2).all()
  assert back.groupby('user').x_label.apply(sorted).tolist() == [
      [0, 0, 1, 2]] * 3
  convert_lib.convert(out, tmp_path / 'small.npz', name='small',
                      synth_seed=0, synth_dims=(4, 4))  # A valid folder.


def test_min_rating_and_kcore(tmp_path):
  src = _tsv(tmp_path / 'r.tsv', ['user_id', 'item_id', 'rating',
                                  'timestamp'], SMALL)
  rows = importer.read_source('csv', src, split='random')
  s = importer.import_dataset(rows, tmp_path / 'o', 'x', min_rating=4,
                              kcore=2, split='random', seed=1)
  # rating >= 4: u1{i1,i2,i4} u2{i2,i3} u3{i1,i2,i4,i5} (9 rows); 2-core
  # drops i3
  # and i5 (one row each), then u2 has only i2 and goes: u1, u3 x i1,i2,i4.
  inter, users, items = _read_out(tmp_path / 'o', 'x')
  assert users.user_id.tolist() == ['u1', 'u3']
  assert items.item_id.tolist() == ['i1', 'i2', 'i4']
  assert len(inter) == 6 and s['n_users'] == 2 and s['n_items'] == 3
  assert s['duplicates_dropped'] == 1 and s['rows_after_min_rating'] == 9


def test_given_split_kept_mmrec_and_recbole_benchmark_files(tmp_path):
  rows = [(7, 3, 0), (7, 4, 0), (7, 5, 1), (7, 6, 2), (9, 3, 0), (9, 5, 1),
          (9, 4, 2)]
  src = _tsv(tmp_path / 'm' / 'm.inter', ['userID', 'itemID', 'x_label'],
             rows)
  assert cli.main(['import', '--format', 'mmrec', '--src', str(src.parent),
                   '--out', str(tmp_path / 'o'), '--name', 'm', '--kcore',
                   '0', '--split', 'given']) == 0
  inter, users, items = _read_out(tmp_path / 'o', 'm')
  assert list(users.columns) == ['userID_src', 'userID']
  assert inter.x_label.tolist() == [r[2] for r in rows]  # File order kept.
  assert users.userID_src.tolist() == ['7', '9']

  folder = tmp_path / 'rb'
  header = ['user_id:token', 'item_id:token', 'timestamp:float']
  for label, name in enumerate(('train', 'valid', 'test')):
    part = [(u, i, 1) for u, i, lab in rows if lab == label]
    _tsv(folder / f'rb.{name}.inter', header, part)
  got = importer.read_source('recbole', folder, split='given')
  assert got.label.tolist() == [0, 0, 0, 1, 1, 2, 2]
  assert len(got.files) == 3


def test_recbole_token_seq_header_and_csv_quoting(tmp_path):
  src = _write(tmp_path / 'd' / 'd.inter',
               'user_id:token\titem_id:token\trating:float\n'
               'a\tx\t3\na\ty\t4\nb\tx\t5\n')
  rows = importer.read_source('recbole', src.parent, split='random')
  assert rows.user.tolist() == ['a', 'a', 'b']
  assert rows.rating.tolist() == [3, 4, 5] and rows.timestamp is None
  csv_src = _write(tmp_path / 'q.csv',
                   'user_id,item_id,timestamp\n"x, y",i1,2014-03-01\n'
                   'z,i2,2014-03-02T12:00:00\n')
  rows = importer.read_source('csv', csv_src, split='time')
  assert rows.user.tolist() == ['x, y', 'z']
  assert rows.timestamp[1] - rows.timestamp[0] == 36 * 3600


def test_outputs_are_never_replaced_without_force(tmp_path):
  src = _tsv(tmp_path / 'r.tsv', ['user_id', 'item_id'],
             [(u, i) for u, i, *_ in SMALL])
  out = tmp_path / 'o'
  args = ['import', '--format', 'csv', '--src', str(src), '--out', str(out),
          '--name', 'x', '--kcore', '0']
  assert cli.main(args) == 0
  mine = (out / 'u_id_mapping.csv').read_bytes()
  (out / 'x.inter').write_text('a file the user edited\n')
  assert cli.main(args) == 3
  assert (out / 'x.inter').read_text() == 'a file the user edited\n'
  assert cli.main(args + ['--force']) == 0
  assert (out / 'u_id_mapping.csv').read_bytes() == mine


# ---------------------------------------------------------------- bad input


BAD_IMPORTS = {
    'missing_column': (
        'csv', 'r.csv', 'user,item\na,b\n', ['--item-column', 'item'],
        r'r\.csv: column\(s\) user_id missing; expected user_id, item, '
        r"found \['user', 'item'\]"),
    'empty_file': ('csv', 'r.csv', '', [], r'r\.csv: empty file'),
    'header_only': ('mmrec', 'r.inter', 'userID\titemID\n', [],
                    r'r\.inter: a header but no rows'),
    'non_utf8': ('recbole', 'r.inter',
                 b'user_id:token\titem_id:token\nab\tc\n\xe9t\xe9\tx\n', [],
                 r'r\.inter: expected UTF-8 text, found the byte 0xe9 on '
                 r'line 3'),
    'untyped_recbole_header': (
        'recbole', 'r.inter', 'user_id\titem_id\n1\t2\n', [],
        r'r\.inter: expected RecBole atomic headers name:type'),
    'kcore_leaves_nothing': (
        'csv', 'r.csv', 'user_id,item_id\n1,1\n1,2\n2,1\n', ['--kcore', '2'],
        r'r\.csv: the 2-core is empty: .*3 rows, 2 users, 2 items.*lower '
        r'--kcore'),
    'empty_id': ('csv', 'r.csv', 'user_id,item_id\n1,1\n,2\n', [],
                 r'r\.csv: column user_id: expected an id, found an empty '
                 r'cell on line 3'),
    'bad_rating': ('csv', 'r.csv', 'user_id,item_id,rating\n1,1,good\n', [],
                   r'r\.csv: column rating: expected a number, found "good" '
                   r'on line 2'),
    'min_rating_without_rating': (
        'csv', 'r.csv', 'user_id,item_id\n1,1\n', ['--min-rating', '4'],
        r'--min-rating needs a rating column'),
    'time_split_without_time': (
        'csv', 'r.csv', 'user_id,item_id\n1,1\n', ['--split', 'time'],
        r'r\.csv: --split time needs a timestamp column'),
    'given_split_without_label': (
        'mmrec', 'r.inter', 'userID\titemID\n1\t1\n', ['--split', 'given'],
        r'r\.inter: column\(s\) x_label missing'),
    'bad_given_label': (
        'mmrec', 'r.inter', 'userID\titemID\tx_label\n1\t1\t0\n1\t2\t5\n',
        ['--split', 'given'],
        r'r\.inter: column x_label: expected 0, 1 or 2 .*found 5 on line 3'),
    'empty_split': (
        'mmrec', 'r.inter', 'userID\titemID\tx_label\n1\t1\t0\n1\t2\t1\n',
        ['--split', 'given'], r'r\.inter: the test split is empty'),
    'ragged_row': ('csv', 'r.csv', 'user_id,item_id\n1,2\n3,4,5,6\n', [],
                   r'r\.csv: cannot parse .*line 3'),
    'one_field_too_many': ('csv', 'r.csv', 'user_id,item_id\n1,2,3\n', [],
                           r'r\.csv: cannot parse .*line 2'),
    'repeated_header': ('csv', 'r.csv', 'user_id,item_id,user_id\n1,2,3\n',
                        [], r"r\.csv: header line: .*'user_id' more than"),
    # The same field with two types: distinct raw names, one field.
    'recbole_field_twice': (
        'recbole', 'x.inter',
        'user_id:token\titem_id:token\titem_id:float\n1\t2\t3\n', [],
        r"x\.inter: header line: .*'item_id' more than once "
        r'\(item_id:token, item_id:float\)'),
}


@pytest.mark.parametrize('case', sorted(BAD_IMPORTS))
def test_bad_import_input(case, tmp_path, capsys):
  fmt_name, file, content, extra, pattern = BAD_IMPORTS[case]
  src = _write(tmp_path / 'src' / file, content)
  out = tmp_path / 'out'
  kcore = [] if '--kcore' in extra else ['--kcore', '0']
  rc = cli.main(['import', '--format', fmt_name, '--src', str(src), '--out',
                 str(out), '--name', 'x', *kcore, *extra])
  err = capsys.readouterr().err
  assert rc == 3, err
  assert err.startswith('error: ') and 'Traceback' not in err
  assert re.search(pattern, err), err
  assert not out.exists() or not any(out.iterdir())  # Nothing half-written.


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
  src = _write(tmp_path / 'r.csv', '')
  assert cli.main(['import', '--format', 'csv', '--src', str(src), '--out',
                   str(tmp_path / 'o'), '--name', 'x', '--debug']) == 3
  err = capsys.readouterr().err
  assert 'Traceback' in err and 'DataError' in err
  assert err.rstrip().splitlines()[-1].startswith('error: ')


# ---------------------------------------------------------------- real data


def test_ml100k_import_reproduces_shared_x_label(shared_data, tmp_path):
  src = shared_data / 'ml-100k'
  out = tmp_path / 'ml100k'
  # The command of issue 17 and of the README, as written.
  cmd = (f'import --format recbole --src {src} --name ml100k --out {out} '
         '--kcore 0 --seed 2024')
  assert cli.main(shlex.split(cmd)) == 0
  inter, users, items = _read_out(out, 'ml100k')
  got = inter.assign(user_id=users.user_id.to_numpy()[inter.userID],
                     item_id=items.item_id.to_numpy()[inter.itemID])
  ref = pd.read_csv(src / 'ml100k.inter', sep='\t')
  # The README: userID = user_id - 1, itemID = item_id - 1.
  ref = ref.assign(user_id=(ref.userID + 1).astype(str),
                   item_id=(ref.itemID + 1).astype(str))
  both = got.merge(ref, on=['user_id', 'item_id'], suffixes=('', '_ref'))
  assert len(both) == len(got) == len(ref) == 100_000
  np.testing.assert_array_equal(both.x_label, both.x_label_ref)
  np.testing.assert_array_equal(both.rating, both.rating_ref)
  assert np.bincount(inter.x_label).tolist() == [80367, 9596, 10037]
  # Sorted numeric ids: here the re-indexing is exactly id - 1.
  assert (users.user_id.astype(int) - 1 == users.userID.astype(int)).all()


def test_readme_data_prep_commands_parse():
  """Every `python -m data_prep` command of "Your own data" parses."""
  text = README.read_text()
  section = text.split('## Your own data', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
  lines = '\n'.join(blocks).replace('\\\n', ' ').splitlines()
  commands = [l.split('python -m data_prep ', 1)[1] for l in lines
              if l.startswith('python -m data_prep ')]
  assert len(commands) >= 4, commands
  parser = cli._parser()  # pylint: disable=protected-access
  for command in commands:
    parser.parse_args(shlex.split(command))


@pytest.mark.parametrize('command', [
    ['import', '--format', 'csv', '--src', 'r.csv', '--out', 'o', '--seed'],
    ['synth', '--out', 'o', '--seed'],
    ['convert', '--src', 's', '--out', 'o.npz', '--synth-features']])
@pytest.mark.parametrize('seed', ['-1', str(2**32), '9' * 30, '1.5'])
def test_a_seed_numpy_cannot_take_is_refused(command, seed, tmp_path,
                                             capsys):
  # Paths in tmp_path: nothing may be written elsewhere if a check fails.
  command = [str(tmp_path / a) if a in ('r.csv', 'o', 's', 'o.npz') else a
             for a in command]
  with pytest.raises(SystemExit) as e:
    cli.main([*command, seed])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  assert re.search(r'error: argument --(seed|synth-features): expected', err)

"""Raw interactions -> an MMRec-format folder (`python -m data_prep import`).

The steps of MMRec's preprocessing notebooks (0rating2inter, 1splitting),
as one validated command:

1. read an MMRec `.inter`, RecBole atomic files or a CSV/TSV;
2. drop repeated (user, item) pairs, keeping the first row (optional);
3. keep rows with rating >= a minimum (optional);
4. k-core on users and items, iterated until nothing changes;
5. re-index users and items to 0..n-1 in sorted order of the source ids
   (numeric order when every id is an integer) and write the mappings as
   MMRec does: `u_id_mapping.csv` / `i_id_mapping.csv`, TSV, the source id
   column under its own name, then `userID` / `itemID`;
6. split per user: MMRec's seeded random rule, a time-ordered rule, or the
   split that came with the data;
7. write `<name>.inter` (userID, itemID, [rating], [timestamp], x_label).

All three files are written atomically together, and existing files are
never replaced without `force`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import format as fmt
from data_prep import inter
from data_prep.format import DataError

FORMATS = ('mmrec', 'recbole', 'csv')
SPLITS = ('random', 'time', 'given')

# Default column names per format: user, item, rating, timestamp, label.
_DEFAULT_COLUMNS = {
    'mmrec': ('userID', 'itemID', 'rating', 'timestamp', 'x_label'),
    'recbole': ('user_id', 'item_id', 'rating', 'timestamp', None),
    'csv': ('user_id', 'item_id', 'rating', 'timestamp', None),
}
# RecBole's benchmark files: a given split as three atomic files.
_RECBOLE_SPLIT_SUFFIXES = ('train', 'valid', 'test')
_INTEGER = re.compile(r'[+-]?\d{1,18}')


@dataclasses.dataclass(frozen=True)
class Columns:
  """Source column names; rating/timestamp/label None when not used."""
  user: str
  item: str
  rating: str | None = None
  timestamp: str | None = None
  label: str | None = None


@dataclasses.dataclass
class Rows:
  """Interactions read from a source, in file order.

  Attributes:
    user, item: str [n] source ids.
    rating, timestamp: float64 [n] or None.
    label: int8 [n] given split label (0/1/2) or None.
    columns: the source column names (the mapping files' headers).
    files: the files read, for messages and the summary.
  """
  user: np.ndarray
  item: np.ndarray
  rating: np.ndarray | None
  timestamp: np.ndarray | None
  label: np.ndarray | None
  columns: Columns
  files: list[Path]

  def __len__(self) -> int:
    return self.user.size

  def take(self, index: np.ndarray) -> Rows:
    """The rows at `index` (a boolean mask or positions), in that order."""
    pick = lambda x: None if x is None else x[index]
    return dataclasses.replace(
        self, user=self.user[index], item=self.item[index],
        rating=pick(self.rating), timestamp=pick(self.timestamp),
        label=pick(self.label))


# ------------------------------------------------------------------ reading


def _float_column(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
  """A numeric column as float64, or raises naming the first bad row."""
  num = pd.to_numeric(df[col], errors='coerce').to_numpy(np.float64)
  bad = ~np.isfinite(num)
  if bad.any():
    r = int(np.argmax(bad))
    raise DataError(f'{path}: column {col}: expected a number, found '
                    f'"{df[col].iloc[r]}" on line {r + 2}')
  return num


def _time_column(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
  """Timestamps as float64 seconds: numbers, or ISO dates for all rows."""
  raw = df[col]
  num = pd.to_numeric(raw, errors='coerce').to_numpy(np.float64)
  if np.isfinite(num).all():
    return num
  if not np.isfinite(num).any():  # Perhaps dates such as 2014-03-01.
    dates = pd.to_datetime(raw, errors='coerce', utc=True, format='ISO8601')
    if dates.notna().all():
      return (dates - pd.Timestamp(0, tz='UTC')).dt.total_seconds(
          ).to_numpy(np.float64)
  r = int(np.argmax(~np.isfinite(num)))
  raise DataError(f'{path}: column {col}: expected a number (or an ISO date '
                  f'in every row), found "{raw.iloc[r]}" on line {r + 2}')


def _id_column(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
  """Ids as stripped strings; an empty id is an error."""
  ids = df[col].str.strip().to_numpy(object)
  empty = ids == ''
  if empty.any():
    r = int(np.argmax(empty))
    raise DataError(f'{path}: column {col}: expected an id, found an empty '
                    f'cell on line {r + 2}')
  return ids.astype(str)


def _load(path: Path, sep: str, quoting: int, typed: bool) -> pd.DataFrame:
  """Reads one source file; strips RecBole's `:type` from the header."""
  df = inter.read_table(path, sep=sep, quoting=quoting)
  if typed:
    untyped = [c for c in df.columns if ':' not in c]
    if untyped:
      raise DataError(
          f'{path}: expected RecBole atomic headers name:type (e.g. '
          f'user_id:token), found {list(df.columns)}; for a plain table use '
          '--format csv, for an MMRec .inter --format mmrec')
    names = [c.partition(':')[0] for c in df.columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
      typed_as = [c for c in df.columns if c.partition(':')[0] == twice[0]]
      raise DataError(
          f'{path}: header line: expected distinct field names, found '
          f'{twice[0]!r} more than once ({", ".join(typed_as)})')
    df.columns = names
  return df


def _rows(path: Path, df: pd.DataFrame, columns: Columns, hint: str) -> Rows:
  """Turns one source table into Rows, checking every column it uses."""
  wanted = [c for c in dataclasses.astuple(columns) if c is not None]
  inter.check_columns(path, df.columns, wanted, hint)
  if len(df) == 0:
    raise DataError(f'{path}: a header but no rows; expected one row per '
                    'interaction')
  label = None
  if columns.label is not None:
    label = inter.int_column(path, df, columns.label)
    bad = (label < 0) | (label > 2)
    if bad.any():
      r = int(np.argmax(bad))
      raise DataError(f'{path}: column {columns.label}: expected 0, 1 or 2 '
                      f'(train, valid, test), found {label[r]} on line '
                      f'{r + 2}')
    label = label.astype(np.int8)
  return Rows(
      user=_id_column(path, df, columns.user),
      item=_id_column(path, df, columns.item),
      rating=(_float_column(path, df, columns.rating)
              if columns.rating else None),
      timestamp=(_time_column(path, df, columns.timestamp)
                 if columns.timestamp else None),
      label=label, columns=columns, files=[path])


def _resolve_columns(fmt_name: str, header: list[str], given: dict[str, Any],
                     split: str) -> Columns:
  """Explicit names are required to exist; defaults are used if present."""
  defaults = _DEFAULT_COLUMNS[fmt_name]
  names = {}
  for key, default in zip(('user', 'item', 'rating', 'timestamp', 'label'),
                          defaults):
    name = given.get(key)
    if name is None and key in ('user', 'item'):
      name = default
    elif name is None and default in header:
      name = default
    names[key] = name
  if split != 'given':
    names['label'] = None  # A label column is ignored unless it is kept.
  elif names['label'] is None and fmt_name != 'recbole':
    names['label'] = defaults[4] or 'x_label'  # Reported missing if absent.
  return Columns(**names)


def _recbole_files(src: Path) -> tuple[Path, list[Path]]:
  """The main `.inter` of a RecBole folder and its benchmark split files."""
  if src.is_file() or src.suffix == '.inter':
    base = src.parent / src.name.removesuffix('.inter')
    return src, [Path(f'{base}.{s}.inter') for s in _RECBOLE_SPLIT_SUFFIXES]
  base = src / src.name
  return (Path(f'{base}.inter'),
          [Path(f'{base}.{s}.inter') for s in _RECBOLE_SPLIT_SUFFIXES])


def read_source(fmt_name: str, src: str | os.PathLike, *, split: str,
                user_column: str | None = None,
                item_column: str | None = None,
                rating_column: str | None = None,
                time_column: str | None = None,
                label_column: str | None = None,
                sep: str | None = None) -> Rows:
  """Reads interactions from one of the supported sources.

  Args:
    fmt_name: 'mmrec' (TSV with userID, itemID, optional rating, timestamp,
      x_label), 'recbole' (atomic files with typed headers; a folder means
      `<folder>/<folder>.inter`, and with split='given' the benchmark files
      `<folder>.train.inter` / `.valid.inter` / `.test.inter`), or 'csv'
      (any delimited table; the separator defaults to a tab for .tsv/.tab
      files and a comma otherwise).
    src: a file, or for mmrec/recbole a folder.
    split: the split that will be made; 'given' reads the labels.
    user_column, item_column, rating_column, time_column, label_column:
      source column names. Defaults per format (user_id/item_id/rating/
      timestamp for recbole and csv, MMRec's names for mmrec); an optional
      column given explicitly must exist, a default one is used if present.
    sep: field separator for csv.

  Returns:
    The rows in file order.

  Raises:
    DataError: unreadable file, missing column, a bad value (naming the
      line), or a given split that is not there.
  """
  if fmt_name not in FORMATS:
    raise DataError(f'format: expected one of {FORMATS}, found {fmt_name!r}')
  src = Path(src)
  given = dict(user=user_column, item=item_column, rating=rating_column,
               timestamp=time_column, label=label_column)
  hint = ('; name the columns with --user-column / --item-column / '
          '--rating-column / --time-column')
  if fmt_name == 'csv':
    if src.is_dir():
      raise DataError(f'{src}: is a folder; --format csv expects the table '
                      'file itself')
    sep = sep or ('\t' if src.suffix.lower() in ('.tsv', '.tab') else ',')
    path, read = src, lambda p: _load(p, sep, csv.QUOTE_MINIMAL, False)
  elif fmt_name == 'mmrec':
    path = src / f'{src.name}.inter' if src.is_dir() else src
    read = lambda p: _load(p, '\t', csv.QUOTE_NONE, False)
  else:
    path, split_files = _recbole_files(src)
    read = lambda p: _load(p, '\t', csv.QUOTE_NONE, True)
    if split == 'given':
      present = [p for p in split_files if p.is_file()]
      if len(present) != 3:
        raise DataError(
            f'{path.parent}: --split given with RecBole files needs the '
            'benchmark files ' + ', '.join(p.name for p in split_files) +
            f'; found {[p.name for p in present] or "none"}')
      tables = [read(p) for p in split_files]
      columns = _resolve_columns(fmt_name, list(tables[0].columns), given,
                                 'random')
      parts = [_rows(p, t, columns, hint) for p, t in zip(split_files, tables)]
      cat = lambda xs: None if xs[0] is None else np.concatenate(xs)
      return Rows(
          user=cat([p.user for p in parts]), item=cat([p.item for p in parts]),
          rating=cat([p.rating for p in parts]),
          timestamp=cat([p.timestamp for p in parts]),
          label=np.concatenate([np.full(len(p), s, np.int8)
                                for s, p in enumerate(parts)]),
          columns=columns, files=split_files)
  df = read(path)
  columns = _resolve_columns(fmt_name, list(df.columns), given, split)
  if split == 'time' and columns.timestamp is None:
    raise DataError(f'{path}: --split time needs a timestamp column; found '
                    f'{list(df.columns)}; name it with --time-column')
  return _rows(path, df, columns, hint)


# ---------------------------------------------------- filtering and ids


def drop_duplicates(rows: Rows) -> tuple[Rows, int]:
  """Keeps the first row of each (user, item) pair; returns rows, dropped."""
  pairs = pd.DataFrame({'u': rows.user, 'i': rows.item})
  keep = ~pairs.duplicated().to_numpy()
  return rows.take(keep), int((~keep).sum())


def kcore_mask(user: np.ndarray, item: np.ndarray, k: int
               ) -> tuple[np.ndarray, int]:
  """Rows of the k-core: every user and item keeps >= k rows.

  Users and items below k are dropped together, and degrees recounted,
  until nothing changes. The result is the unique largest subset in which
  all degrees are >= k, so the order of removals does not matter.

  Args:
    user, item: int [n] dense codes (0..U-1, 0..I-1).
    k: minimum degree; 0 or 1 keeps every row.

  Returns:
    (bool [n] mask of kept rows, number of rounds that removed rows).
  """
  keep = np.ones(user.size, bool)
  rounds = 0
  if k <= 1:
    return keep, rounds
  n_users = int(user.max(initial=-1)) + 1
  n_items = int(item.max(initial=-1)) + 1
  while True:
    du = np.bincount(user[keep], minlength=n_users)
    di = np.bincount(item[keep], minlength=n_items)
    drop = keep & ((du[user] < k) | (di[item] < k))
    if not drop.any():
      return keep, rounds
    keep &= ~drop
    rounds += 1


def sorted_codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense codes of string ids in sorted order of the ids.

  Ids that are all integers are ordered by value (so "10" follows "9"),
  ties such as "7" / "007" by string; otherwise by string.

  Returns:
    (unique ids in code order, int64 code of each input id).
  """
  uniq, codes = np.unique(ids, return_inverse=True)
  if uniq.size and all(_INTEGER.fullmatch(s) for s in uniq):
    order = np.lexsort((uniq, uniq.astype(np.int64)))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    uniq, codes = uniq[order], rank[codes]
  return uniq, codes.astype(np.int64)


# ------------------------------------------------------------------ splits


def split_labels(sorted_user: np.ndarray, n_users: int) -> np.ndarray:
  """MMRec's per-user split sizes applied to rows grouped by user.

  Args:
    sorted_user: int [n] user of each row, rows of a user contiguous and in
      the order that decides the split (first rows train, last rows test).
    n_users: U.

  Returns:
    int8 [n] labels: per user with n rows, n < 10 -> n-2 / 1 / 1 train /
    valid / test, else vt = int(0.2 n), valid = vt // 2, test = vt - valid.
  """
  deg = np.bincount(sorted_user, minlength=n_users)
  start = np.concatenate([[0], np.cumsum(deg)[:-1]])
  rank = np.arange(sorted_user.size) - start[sorted_user]
  n = deg[sorted_user]
  vt = np.where(n < 10, 2, (0.2 * n).astype(np.int64))
  n_train, n_valid = n - vt, vt // 2
  label = np.where(rank < n_train, 0,
                   np.where(rank < n_train + n_valid, 1, 2))
  return label.astype(np.int8)


def random_split(user: np.ndarray, n_users: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """MMRec's random split (1splitting.ipynb), seeded.

  The rows are shuffled exactly as `DataFrame.sample(frac=1,
  random_state=seed)` does and stable-sorted by user; `split_labels` then
  assigns the first rows of each user to train.

  Returns:
    (order: row positions in output order, label int8 [n] in that order).
  """
  perm = pd.RangeIndex(user.size).to_series().sample(
      frac=1, random_state=seed).to_numpy()
  order = perm[np.argsort(user[perm], kind='stable')]
  return order, split_labels(user[order], n_users)


def time_split(user: np.ndarray, timestamp: np.ndarray, n_users: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Per-user time-ordered split with MMRec's sizes.

  Each user's rows are ordered by timestamp (equal times keep file order);
  the oldest go to train, the newest to test, in the sizes of
  `split_labels`.

  Returns:
    (order, label) as for `random_split`.
  """
  order = np.lexsort((np.arange(user.size), timestamp, user))
  return order, split_labels(user[order], n_users)


# ------------------------------------------------------------------ writing


def _mapping_table(uniq: np.ndarray, source_name: str,
                   target: str) -> pd.DataFrame:
  # MMRec's own .inter already calls the source column userID / itemID.
  name = f'{source_name}_src' if source_name == target else source_name
  return pd.DataFrame({name: uniq, target: np.arange(uniq.size)})


def _number_column(x: np.ndarray) -> np.ndarray:
  """Integral float columns are written as integers (timestamps)."""
  if np.all(x == np.round(x)) and np.abs(x).max(initial=0) < 2.0**53:
    return x.astype(np.int64)
  return x


def _tsv_writer(df: pd.DataFrame):
  def write(f) -> None:
    text = io.StringIO()
    df.to_csv(text, sep='\t', index=False, lineterminator='\n')
    f.write(text.getvalue().encode('utf-8'))
  return write


def import_dataset(rows: Rows, out: str | os.PathLike, name: str, *,
                   split: str = 'random', seed: int = 2024,
                   kcore: int = 5, min_rating: float | None = None,
                   dedup: bool = True, force: bool = False
                   ) -> dict[str, Any]:
  """Filters, re-indexes and splits `rows`; writes an MMRec folder.

  Args:
    rows: from `read_source`.
    out: output folder (created if needed).
    name: dataset name: writes `<out>/<name>.inter`.
    split: 'random' (MMRec's seeded rule), 'time' (per user by timestamp)
      or 'given' (the source's labels).
    seed: random_state of the random split.
    kcore: minimum rows per user and per item, iterated; 0 turns it off.
    min_rating: keep rows with rating >= this (needs a rating column).
    dedup: keep only the first row of each (user, item) pair.
    force: replace existing output files.

  Returns:
    A summary: counts after each step, the paths written.

  Raises:
    DataError: bad arguments, a filter that leaves nothing, an empty split,
      or output files that exist (without force).
  """
  out = Path(out)
  if split not in SPLITS:
    raise DataError(f'split: expected one of {SPLITS}, found {split!r}')
  if kcore < 0:
    raise DataError(f'kcore (--kcore): expected an integer >= 0, found '
                    f'{kcore}')
  if not name or '/' in name or name.startswith('.'):
    raise DataError(f'name (--name): expected a file stem such as "ml100k", '
                    f'found {name!r}')
  if out.exists() and not out.is_dir():
    raise DataError(f'{out}: exists and is not a folder; expected the output '
                    'folder')
  paths = {'inter': out / f'{name}.inter',
           'users': out / 'u_id_mapping.csv',
           'items': out / 'i_id_mapping.csv'}
  for p in paths.values():
    fmt.check_output_path(p, force=force)
  source = ', '.join(str(p) for p in rows.files)
  summary: dict[str, Any] = {'source': source, 'rows_read': len(rows)}

  if dedup:
    rows, summary['duplicates_dropped'] = drop_duplicates(rows)
  if min_rating is not None:
    if rows.rating is None:
      raise DataError(f'{source}: --min-rating needs a rating column; none '
                      'was found (name it with --rating-column)')
    rows = rows.take(rows.rating >= min_rating)
    summary['rows_after_min_rating'] = len(rows)
    if not len(rows):
      raise DataError(f'{source}: no rows have rating >= {min_rating}')
  _, user = sorted_codes(rows.user)
  _, item = sorted_codes(rows.item)
  keep, rounds = kcore_mask(user, item, kcore)
  summary['kcore_rounds'] = rounds
  if not keep.any():
    raise DataError(
        f'{source}: the {kcore}-core is empty: no set of users and items '
        f'has >= {kcore} rows each ({len(rows)} rows, '
        f'{np.unique(user).size} users, {np.unique(item).size} items before '
        'filtering); lower --kcore (0 turns it off)')
  rows = rows.take(keep)
  users, user = sorted_codes(rows.user)
  items, item = sorted_codes(rows.item)
  n_users = users.size

  if split == 'random':
    order, label = random_split(user, n_users, seed)
  elif split == 'time':
    order, label = time_split(user, rows.timestamp, n_users)
  else:
    order, label = np.arange(len(rows)), rows.label
  counts = np.bincount(label, minlength=3)
  for s, split_name in enumerate(inter.SPLIT_NAMES):
    if counts[s] == 0:
      raise DataError(f'{source}: the {split_name} split is empty after '
                      f'filtering ({len(rows)} rows); expected rows in '
                      'train, valid and test')
  per_user = np.bincount(user, minlength=n_users)

  table = {'userID': user[order], 'itemID': item[order]}
  if rows.rating is not None:
    table['rating'] = rows.rating[order]
  if rows.timestamp is not None:
    table['timestamp'] = _number_column(rows.timestamp[order])
  table['x_label'] = label
  fmt.write_files_atomically({
      paths['inter']: _tsv_writer(pd.DataFrame(table)),
      paths['users']: _tsv_writer(
          _mapping_table(users, rows.columns.user, 'userID')),
      paths['items']: _tsv_writer(
          _mapping_table(items, rows.columns.item, 'itemID')),
  })
  summary.update(
      n_rows=len(rows), n_users=n_users, n_items=items.size,
      n_train=int(counts[0]), n_valid=int(counts[1]), n_test=int(counts[2]),
      users_under_3_rows=int((per_user < 3).sum()),
      files={k: str(p) for k, p in paths.items()})
  return summary

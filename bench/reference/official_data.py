"""An MMRec dataset folder -> the files the OFFICIAL DiffMM and MMSSL read.

Pure numpy / scipy / stdlib, so that both the torch interpreter
(official_worker.py) and the tests can import it. Input: an MMRec folder,
`<name>.inter` (tab-separated, header with userID, itemID, x_label: 0 train,
1 valid, 2 test; ids used as given, as MMRec does) and two item-feature
`.npy` files (row i = itemID i): the image slot and a second modality (for
our TikTok copy: `audio_feat.npy`, as it has no text features).

Outputs (every row of the .inter, each in its split; nothing dropped):

* DiffMM (HKUDS/DiffMM DataHandler.py): `trnMat.pkl`, `valMat.pkl`,
  `tstMat.pkl`, pickled `scipy.sparse.coo_matrix` of shape (U, I), float64
  data 1.0, int32 row/col sorted by (user, item), which is what DiffMM's own
  Datasets/tiktok/*.pkl hold (checked on its commit fae20e6: converting
  ../shared/data/tiktok gives the same three matrices); DiffMM reads only
  trnMat and tstMat (its loader casts them to float32 coo). Features:
  `image_feat.npy`, `text_feat.npy` (the second modality in the text slot).
* MMSSL (HKUDS/MMSSL utility/load_data.py, main.py): `train.json`,
  `val.json`, `test.json` ({"user": [items]}, users with no item in that
  split left out, which its loader skips anyway), `train_mat` (a pickled
  `scipy.sparse.csr_matrix` (U, I) float32 of the training pairs: main.py
  row-slices it and multiplies it with `sp.diags`, so it must be the
  matrix class, not a sparse array), `image_feat.npy`, `text_feat.npy`.

U = max userID + 1 over all rows; I = the feature files' row count (their
rows are the items; an itemID past it is an error). Features are written
with the dtype they have (TikTok's are float16; both codes cast to float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import pickle
import sys

import numpy as np
import scipy.sparse as sp

COLUMNS = ('userID', 'itemID', 'x_label')
SPLITS = ('train', 'valid', 'test')  # x_label 0, 1, 2
DIFFMM_FILES = ('trnMat.pkl', 'valMat.pkl', 'tstMat.pkl')
MMSSL_FILES = ('train.json', 'val.json', 'test.json')
FEATURE_SLOTS = ('image_feat.npy', 'text_feat.npy')
CODEBASES = ('diffmm', 'mmssl')


class DataError(ValueError):
  """An unusable input folder; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Split:
  """The interactions of one MMRec folder and its two feature matrices."""
  users: np.ndarray    # int64 (n,), in .inter row order
  items: np.ndarray    # int64 (n,)
  labels: np.ndarray   # int8 (n,): 0 train, 1 valid, 2 test
  n_users: int
  n_items: int
  feat_image: np.ndarray
  feat_second: np.ndarray

  def pairs(self, label: int) -> set[tuple[int, int]]:
    keep = self.labels == label
    return set(zip(self.users[keep].tolist(), self.items[keep].tolist()))


def _int_column(path: pathlib.Path, rows: list[list[str]], col: int,
                name: str) -> np.ndarray:
  out = np.empty(len(rows), np.int64)
  for n, row in enumerate(rows):
    try:
      out[n] = int(row[col])
    except ValueError:
      raise DataError(f'{path}, line {n + 2}: {name} {row[col]!r} is not an '
                      'integer') from None
  if len(out) and out.min() < 0:
    n = int(np.argmin(out))
    raise DataError(f'{path}, line {n + 2}: negative {name} {out[n]}')
  return out


def read_inter(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray,
                                            np.ndarray]:
  """(users, items, labels) of an MMRec .inter file, validated."""
  if not path.is_file():
    raise DataError(f'{path} not found: the folder must hold <name>.inter')
  lines = path.read_text(encoding='utf-8').splitlines()
  if not lines:
    raise DataError(f'{path} is empty (expected a header line)')
  header = lines[0].split('\t')
  missing = [c for c in COLUMNS if c not in header]
  if missing:
    raise DataError(f'{path}: the tab-separated header lacks {missing} '
                    f'(found {header})')
  cols = [header.index(c) for c in COLUMNS]
  rows = [ln.split('\t') for ln in lines[1:] if ln.strip()]
  for n, row in enumerate(rows):
    if len(row) != len(header):
      raise DataError(f'{path}, line {n + 2}: {len(row)} fields, the header '
                      f'has {len(header)}')
  if not rows:
    raise DataError(f'{path} has no interactions')
  users, items, labels = (_int_column(path, rows, c, name)
                          for c, name in zip(cols, COLUMNS))
  bad = np.flatnonzero(labels > 2)
  if len(bad):
    raise DataError(f'{path}, line {bad[0] + 2}: x_label {labels[bad[0]]} '
                    '(expected 0 train, 1 valid, 2 test)')
  key = users * (items.max() + 1) + items
  uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
  if len(uniq) != len(key):
    dup = first[np.argmax(counts > 1)]
    raise DataError(f'{path}: the pair (user {users[dup]}, item '
                    f'{items[dup]}) occurs {counts.max()} times; each pair '
                    'must be in exactly one split')
  if not np.any(labels == 0) or not np.any(labels == 2):
    raise DataError(f'{path}: needs training (x_label 0) and test '
                    '(x_label 2) rows')
  return users, items, labels.astype(np.int8)


def _read_features(path: pathlib.Path, role: str) -> np.ndarray:
  if not path.is_file():
    raise DataError(f'{path} not found ({role} features)')
  feat = np.load(path)
  if feat.ndim != 2 or feat.shape[0] == 0 or feat.shape[1] == 0:
    raise DataError(f'{path}: expected a 2-D (items, dim) array, got shape '
                    f'{feat.shape}')
  if not np.issubdtype(feat.dtype, np.floating):
    raise DataError(f'{path}: dtype {feat.dtype}, expected floats')
  if not np.all(np.isfinite(feat)):
    raise DataError(f'{path}: holds NaN or inf')
  return feat


def read_folder(folder: str | pathlib.Path, name: str | None = None,
                image: str = 'image_feat.npy',
                second: str = 'text_feat.npy') -> Split:
  """Reads and checks an MMRec folder (`second`: TikTok's audio_feat.npy)."""
  folder = pathlib.Path(folder)
  name = name or folder.name
  users, items, labels = read_inter(folder / f'{name}.inter')
  feat_image = _read_features(folder / image, 'image')
  feat_second = _read_features(folder / second, 'second modality')
  if feat_image.shape[0] != feat_second.shape[0]:
    raise DataError(f'{folder}: {image} has {feat_image.shape[0]} rows, '
                    f'{second} {feat_second.shape[0]}; both are one row per '
                    'item')
  n_items = feat_image.shape[0]
  if items.max() >= n_items:
    raise DataError(f'{folder}: itemID {items.max()} but the features have '
                    f'{n_items} rows (row i is item i)')
  return Split(users, items, labels, int(users.max()) + 1, n_items,
               feat_image, feat_second)


def _coo(split: Split, label: int, dtype) -> sp.coo_matrix:
  keep = split.labels == label
  order = np.lexsort((split.items[keep], split.users[keep]))
  rows = split.users[keep][order].astype(np.int32)
  cols = split.items[keep][order].astype(np.int32)
  return sp.coo_matrix((np.ones(len(rows), dtype), (rows, cols)),
                       shape=(split.n_users, split.n_items))


def _write_features(split: Split, out: pathlib.Path) -> None:
  np.save(out / FEATURE_SLOTS[0], split.feat_image)
  np.save(out / FEATURE_SLOTS[1], split.feat_second)


def write_diffmm(split: Split, out: str | pathlib.Path) -> pathlib.Path:
  """DiffMM's Datasets/<data>/ files into `out` (created); returns it."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  for label, fname in enumerate(DIFFMM_FILES):
    with open(out / fname, 'wb') as f:
      pickle.dump(_coo(split, label, np.float64), f)
  _write_features(split, out)
  return out


def write_mmssl(split: Split, out: str | pathlib.Path) -> pathlib.Path:
  """MMSSL's data/<dataset>/ files into `out` (created); returns it."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  for label, fname in enumerate(MMSSL_FILES):
    keep = split.labels == label
    per_user: dict[str, list[int]] = {}
    for u, i in zip(split.users[keep].tolist(), split.items[keep].tolist()):
      per_user.setdefault(str(u), []).append(i)
    with open(out / fname, 'w', encoding='utf-8') as f:
      json.dump(per_user, f)
  with open(out / 'train_mat', 'wb') as f:
    pickle.dump(_coo(split, 0, np.float32).tocsr(), f)
  _write_features(split, out)
  return out


WRITERS = {'diffmm': write_diffmm, 'mmssl': write_mmssl}


# ----------------------------------------- reading the outputs back (tests)


def diffmm_pairs(out: str | pathlib.Path) -> list[set[tuple[int, int]]]:
  """[train, valid, test] pairs as DiffMM's loader sees them (!= 0)."""
  sets = []
  for fname in DIFFMM_FILES:
    with open(pathlib.Path(out) / fname, 'rb') as f:
      mat = sp.coo_matrix(pickle.load(f) != 0)
    sets.append(set(zip(mat.row.tolist(), mat.col.tolist())))
  return sets


def mmssl_pairs(out: str | pathlib.Path) -> list[set[tuple[int, int]]]:
  """[train, valid, test] pairs of MMSSL's json files."""
  sets = []
  for fname in MMSSL_FILES:
    with open(pathlib.Path(out) / fname, encoding='utf-8') as f:
      sets.append({(int(u), i) for u, its in json.load(f).items()
                   for i in its})
  return sets


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--folder', required=True, help='MMRec dataset folder')
  p.add_argument('--name', help='stem of <name>.inter (default: folder name)')
  p.add_argument('--image', default='image_feat.npy')
  p.add_argument('--second', default='text_feat.npy',
                 help='second modality (TikTok here: audio_feat.npy)')
  p.add_argument('--codebase', choices=CODEBASES, required=True)
  p.add_argument('--out', required=True, help='folder to write (created)')
  args = p.parse_args(argv)
  try:
    split = read_folder(args.folder, args.name, args.image, args.second)
  except DataError as e:
    sys.exit(f'official_data: {e}')
  WRITERS[args.codebase](split, args.out)
  print(f'{args.codebase}: U={split.n_users} I={split.n_items} '
        + ' '.join(f'{s}={int(np.sum(split.labels == k))}'
                   for k, s in enumerate(SPLITS)) + f' -> {args.out}')


if __name__ == '__main__':
  main()

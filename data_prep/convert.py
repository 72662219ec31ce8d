"""MMRec dataset folder -> one mentor_jax .npz (format in docs/DESIGN.md)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import format as fmt
from data_prep import graphs
from data_prep import inter

CREATED_BY = 'mentor_jax data_prep.convert'
# The paper's feature widths (4096-d CNN image, 384-d MiniLM text).
PAPER_DIMS = (4096, 384)


def sha256_file(path: str | os.PathLike) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def split_csr(user: np.ndarray, item: np.ndarray,
              n_users: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-user CSR of one split: (indptr int32 [U+1], items int32 [n]).

  Items are sorted ascending within a user; duplicates are kept.
  """
  order = np.lexsort((item, user))
  indptr = np.concatenate([[0], np.cumsum(np.bincount(user,
                                                      minlength=n_users))])
  return indptr.astype(np.int32), item[order].astype(np.int32)


def synth_features(n_items: int, dim: int, seed: int,
                   modality: int) -> np.ndarray:
  """Seeded standard-normal float32 features [n_items, dim] (no signal)."""
  rng = np.random.default_rng([seed, modality])
  return rng.standard_normal((n_items, dim), dtype=np.float32)


def _features(src: Path, file: str, n_items: int, synth_seed: int | None,
              synth_dim: int, modality: int
              ) -> tuple[np.ndarray, dict[str, Any]]:
  """Reads one modality, or synthesizes it if absent and a seed is given."""
  path = src / file
  if not path.exists() and synth_seed is not None:
    x = synth_features(n_items, synth_dim, synth_seed, modality)
    return x, {'file': None, 'dim': synth_dim, 'sha256': None,
               'generated': True, 'seed': synth_seed}
  x = inter.read_features(path, n_items)
  return x, {'file': file, 'dim': int(x.shape[1]),
             'sha256': sha256_file(path), 'generated': False}


def convert(src: str | os.PathLike, out: str | os.PathLike, *,
            name: str | None = None, inter_file: str | None = None,
            v_feat: str = 'image_feat.npy', t_feat: str = 'text_feat.npy',
            knn_k: int = 40, synth_seed: int | None = None,
            synth_dims: tuple[int, int] = PAPER_DIMS) -> dict[str, Any]:
  """Converts an MMRec folder into a validated .npz.

  Args:
    src: folder with `<name>.inter` and the feature .npy files.
    out: the .npz to write (atomically; nothing is written on error).
    name: dataset name; defaults to the folder name.
    inter_file: the .inter file name in `src`; defaults to `<name>.inter`.
    v_feat: file of the first ("visual") modality.
    t_feat: file of the second ("textual") modality; e.g. audio_feat.npy
      for TikTok.
    knn_k: stored kNN list length; the model uses prefixes of it. Clamped to
      I for tiny datasets.
    synth_seed: if set, a missing feature file is replaced by seeded random
      features (recorded as generated in meta); existing files are used.
    synth_dims: (d_v, d_t) of synthesized features.

  Returns:
    The meta dict written to the file.

  Raises:
    DataError: invalid input (see `data_prep.inter`), knn_k < 1, or an
      `out` that is a folder.
  """
  src, out = Path(src), fmt.check_output_path(out)
  if not src.is_dir():
    raise fmt.DataError(f'{src}: no such directory')
  if isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1:
    raise fmt.DataError(f'knn_k (--knn-k): expected an integer >= 1, found '
                        f'{knn_k!r}')
  if synth_seed is not None and min(synth_dims) < 1:
    raise fmt.DataError(f'synth_dims (--synth-dims): expected two integers '
                        f'>= 1, found {tuple(synth_dims)}')
  name = name or src.resolve().name
  inter_file = inter_file or f'{name}.inter'
  data = inter.read_inter(src / inter_file)
  n_users, n_items = data.n_users, data.n_items
  feat_v, meta_v = _features(src, v_feat, n_items, synth_seed,
                             synth_dims[0], 0)
  feat_t, meta_t = _features(src, t_feat, n_items, synth_seed,
                             synth_dims[1], 1)

  arrays: dict[str, np.ndarray] = {'feat_v': feat_v, 'feat_t': feat_t}
  train_user, train_item = data.split(0)
  arrays['train_user'] = train_user.astype(np.int32)
  arrays['train_item'] = train_item.astype(np.int32)
  counts = {}
  for label, s in enumerate(fmt.SPLITS):
    u, i = data.split(label)
    arrays[f'{s}_indptr'], arrays[f'{s}_items'] = split_csr(u, i, n_users)
    counts[f'n_{s}'] = int(u.size)
  (arrays['adj_indptr'], arrays['adj_indices'],
   arrays['adj_values']) = graphs.normalized_adjacency(
       train_user, train_item, n_users, n_items)
  k = min(knn_k, n_items)
  arrays['knn_v'] = graphs.knn_cosine(feat_v, k)
  arrays['knn_t'] = graphs.knn_cosine(feat_t, k)
  arrays['neg_items'] = np.unique(train_item).astype(np.int32)

  meta = {
      'format_version': fmt.FORMAT_VERSION,
      'name': name,
      'n_users': n_users,
      'n_items': n_items,
      **counts,
      'n_cold_start_dropped': data.n_cold_start_dropped,
      'knn_k': k,
      'inter_file': inter_file,
      'inter_sha256': sha256_file(src / inter_file),
      'feat_v': meta_v,
      'feat_t': meta_t,
      'created_by': CREATED_BY,
  }
  fmt.save_npz(out, arrays, meta)
  return meta

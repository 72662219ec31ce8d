"""Vectors of new items: features, but no interactions yet.

The model computes them as it computes every item vector: the dataset is
extended by the new items (their features appended, the item-item kNN lists
recomputed over all items, no edges in the user-item graph), the model is
built for it, the trained parameters are copied in, and the item vectors
are recomputed; the new items' rows are the answer.

Parameters with a row per item grow by a row per new item: rows of tables
that the model starts from the raw features (FREEDOM's and BM3's feature
tables, say) start as the new items' features, as the model would start
them; rows of ID tables are zero, since no interaction has moved them from
their random start (a random vector would only add noise). A model whose
item vectors do not read item features (MF-BPR, LightGCN, LayerGCN) cannot
embed a new item, and says so.

New items file: an `.npz` with `feat_v` [n, d_v], `feat_t` [n, d_t] and,
optionally, `ids` [n] (source ids; default: the next dataset ids).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from flax import nnx
import jax
import numpy as np

from data_prep import graphs
from data_prep import inter
from data_prep.format import DataError
from mentor_jax import data as data_lib
from mentor_jax import epoch as epoch_lib
from mentor_jax import errors
from mentor_jax import registry


def read_new_items(path: pathlib.Path, dataset: data_lib.Dataset
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(feat_v, feat_t, ids) from a new-items `.npz`, checked.

  Raises:
    DataError: a missing key, a wrong shape, non-finite or huge values.
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot be read as an .npz ({e})') from e
  out = []
  n = None
  for key, dim in (('feat_v', dataset.dim_v), ('feat_t', dataset.dim_t)):
    if key not in arrays:
      raise DataError(f'{path}: no array {key}; expected feat_v [n, '
                      f'{dataset.dim_v}] and feat_t [n, {dataset.dim_t}]')
    x = arrays[key]
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1 or (
        n is not None and x.shape[0] != n):
      raise DataError(f'{path}: {key} has shape {x.shape}; expected '
                      f'[n, {dim}] with the same n >= 1 as feat_v')
    # The checks of a dataset's feature files (dtype, NaN/inf, magnitude).
    x = inter.check_features(x, f'{path}: {key}')
    n = x.shape[0]
    out.append(x)
  if 'ids' in arrays:
    ids = np.asarray(arrays['ids']).astype(str)
    if ids.shape != (n,) or len(set(ids.tolist())) != n:
      raise DataError(f'{path}: ids has shape {ids.shape}; expected {n} '
                      'distinct ids, one per new item')
  else:
    ids = np.arange(dataset.n_items, dataset.n_items + n).astype(str)
  return out[0], out[1], ids


def extend_dataset(dataset: data_lib.Dataset, feat_v: np.ndarray,
                   feat_t: np.ndarray) -> data_lib.Dataset:
  """The dataset with the new items appended: features, kNN lists over all
  items, and nodes with no edges (users keep their rows)."""
  a = dataset.arrays
  n_new = feat_v.shape[0]
  arrays = dict(a)
  arrays['feat_v'] = np.concatenate([a['feat_v'], feat_v])
  arrays['feat_t'] = np.concatenate([a['feat_t'], feat_t])
  k = a['knn_v'].shape[1]
  arrays['knn_v'] = graphs.knn_cosine(arrays['feat_v'], k)
  arrays['knn_t'] = graphs.knn_cosine(arrays['feat_t'], k)
  arrays['adj_indptr'] = np.concatenate(
      [a['adj_indptr'], np.full(n_new, a['adj_indptr'][-1],
                                a['adj_indptr'].dtype)])
  meta = dict(dataset.meta, n_items=dataset.n_items + n_new)
  return dataclasses.replace(dataset, arrays=arrays, meta=meta,
                             digest=data_lib.content_digest(arrays))


def grow_params(trained: Any, fresh: Any, n_old: int, n_new: int,
                features: tuple[np.ndarray, ...]) -> Any:
  """`fresh`'s structure with `trained`'s values; item rows added.

  Raises:
    CheckpointError: a leaf grew in a way that is not rows of new items.
  """
  def grow(path, old, new):
    old, new = np.asarray(old), np.asarray(new)
    if old.shape == new.shape:
      return old
    if (old.ndim >= 1 and new.shape[0] == old.shape[0] + n_new
        and new.shape[1:] == old.shape[1:]):
      from_features = any(
          f.shape[1:] == old.shape[1:] and f.shape[0] == old.shape[0] + n_new
          and np.array_equal(new[:old.shape[0]], f[:old.shape[0]])
          for f in features)
      rows = (new[old.shape[0]:] if from_features
              else np.zeros((n_new,) + old.shape[1:], old.dtype))
      return np.concatenate([old, rows])
    raise errors.CheckpointError(
        f'parameter {jax.tree_util.keystr(path)}: shape {old.shape} in the '
        f'checkpoint but {new.shape} with {n_new} new items; this model '
        'cannot embed new items')
  del n_old
  return jax.tree_util.tree_map_with_path(grow, trained, fresh)


def embed_new_items(restored, path: pathlib.Path
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(vectors [n, D] float32, source ids [n]) of the new items in `path`.

  Args:
    restored: an `evaluate.load` result (its dataset holds every array).
    path: the new items' `.npz` (module docstring).

  Raises:
    ConfigError: the model's item vectors do not read item features.
    DataError: a bad new-items file.
  """
  config, dataset = restored.config, restored.dataset
  family = registry.get(config.model)
  if not family.item_features:
    raise errors.ConfigError(
        f'{family.title} ranks by ID embeddings only: a new item has no '
        'trained vector, so it cannot be embedded from its features')
  feat_v, feat_t, ids = read_new_items(path, dataset)
  extended = extend_dataset(dataset, feat_v, feat_t)
  graphdef, fresh, rest = nnx.split(family.create_model(config, extended),
                                    nnx.Param, ...)
  params = grow_params(restored.params, fresh, dataset.n_items,
                       feat_v.shape[0],
                       (extended.arrays['feat_v'], extended.arrays['feat_t']))
  hp = epoch_lib.make_hparams(family, config, extended)
  data = data_lib.to_device(extended, config.knn_k)
  _, items = epoch_lib.clean_scores(params, rest, data, graphdef=graphdef,
                                    family=family, hp=hp)
  return np.asarray(items[dataset.n_items:], np.float32), ids

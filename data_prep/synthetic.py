"""Seeded synthetic datasets in MMRec folder format, with planted structure.

Users and items get latent factors. Each user's items are a sample without
replacement (Gumbel top-k) from softmax(beta * affinity + log popularity),
so interactions follow the factors and a popularity skew. Item features are
noisy linear maps of the item factors, so both modalities carry real signal.
Counts are exact: every user has >= 3 (5 where possible) distinct items, every
item occurs, and the split follows MMRec's per-user rule.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep import importer

FACTOR_DIM = 16
BETA = 3.0  # Strength of the factor affinity in the item choice.
POP_SIGMA = 1.0  # Log-normal spread of item popularity.
ACTIVITY_SIGMA = 1.0  # Log-normal spread of user activity.
# Feature noise std (visual, textual) against unit signal per dimension.
# With BETA this gives co-interacted items a mean centred cosine of about
# 0.04 (visual) / 0.10 (textual) on `small`, close to the real TikTok
# features (0.045 / 0.086, shared/data/tiktok/README.md).
NOISE = (2.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Shape:
  """Sizes of a synthetic dataset."""
  n_users: int
  n_items: int
  n_inter: int
  dim_v: int
  dim_t: int

  def scaled(self, scale: float) -> Shape:
    """Scales users and interactions (items fixed), keeping the ratio."""
    return dataclasses.replace(self, n_users=round(self.n_users * scale),
                               n_inter=round(self.n_inter * scale))


PRESETS = {
    'tiny': Shape(60, 40, 480, 32, 16),
    'small': Shape(1000, 600, 12000, 256, 64),
    'baby': Shape(19445, 7050, 160792, 4096, 384),
    'sports': Shape(35598, 18357, 296337, 4096, 384),
    'clothing': Shape(39387, 23033, 278677, 4096, 384),
}


def user_degrees(rng: np.random.Generator, shape: Shape) -> np.ndarray:
  """Per-user interaction counts: sum n_inter, each in [min_deg, n_items]."""
  u, i, n = shape.n_users, shape.n_items, shape.n_inter
  min_deg = 5 if n >= 5 * u else 3  # 5-core like the Amazon data if possible.
  if n < min_deg * u or n > u * i or min_deg > i or n < i:
    raise ValueError(f'cannot place {n} unique interactions with >= 3 per '
                     f'user and every item used: {u} users x {i} items')
  weight = rng.lognormal(0.0, ACTIVITY_SIGMA, u)
  deg = min_deg + rng.multinomial(n - min_deg * u, weight / weight.sum())
  # Rarely a user exceeds the item count; move the excess to others. Each
  # round is vectorized and the loop ends because sum(deg) <= u * i.
  while (deg > i).any():
    excess = int(np.maximum(deg - i, 0).sum())
    deg = np.minimum(deg, i)
    free = np.where(deg < i, weight, 0.0)
    deg = deg + rng.multinomial(excess, free / free.sum())
  return deg


def sample_items(rng: np.random.Generator, logits_fn, degrees: np.ndarray,
                 n_items: int, memory_budget: int = 64 << 20) -> np.ndarray:
  """Gumbel top-k: for each user, `degrees[u]` distinct items.

  Args:
    rng: generator.
    logits_fn: (start, stop) -> float32 [stop-start, I] logits of users.
    degrees: int [U] items per user.
    n_items: I.
    memory_budget: bytes of per-block temporaries (~20 per user-item pair).
      Small blocks are faster too: arrays under glibc's 32 MiB mmap
      threshold are reused instead of page-faulted in anew each block.

  Returns:
    int64 [sum(degrees)] items, grouped by user in user order.
  """
  n_users = degrees.size
  block = max(1, memory_budget // (20 * n_items))
  out = []
  for s in range(0, n_users, block):
    keys = logits_fn(s, min(s + block, n_users))
    # Gumbel noise -log(-log(u)); u == 0 gives a key of -inf (never chosen).
    u = rng.random(keys.shape, dtype=np.float32)
    with np.errstate(divide='ignore'):
      keys -= np.log(-np.log(u, out=u), out=u)
    d = degrees[s:s + block]
    dmax = int(d.max())
    top = np.argpartition(keys, n_items - dmax, axis=1)[:, n_items - dmax:]
    top_keys = np.take_along_axis(keys, top, axis=1)
    top = np.take_along_axis(top, np.argsort(-top_keys, axis=1), axis=1)
    out.append(top[np.arange(dmax) < d[:, None]])
  return np.concatenate(out).astype(np.int64)


def cover_items(rng: np.random.Generator, item: np.ndarray,
                n_items: int) -> np.ndarray:
  """Reassigns a few rows so every item occurs; user degrees are unchanged.

  A missing item replaces a random row whose item occurs elsewhere too, so no
  item is emptied and, as the missing item had no rows, no pair repeats.
  """
  missing = np.flatnonzero(np.bincount(item, minlength=n_items) == 0)
  if missing.size == 0:
    return item
  perm = rng.permutation(item.size)
  _, first = np.unique(item[perm], return_index=True)
  eligible = np.delete(perm, first)  # Rows that are not an item's only one.
  rows = rng.choice(eligible, size=missing.size, replace=False)
  item = item.copy()
  item[rows] = rng.permutation(missing)
  return item


def mmrec_split(rng: np.random.Generator, user: np.ndarray,
                n_users: int) -> tuple[np.ndarray, np.ndarray]:
  """MMRec's per-user random split (preprocessing/1splitting.ipynb).

  Args:
    rng: generator.
    user: int [n] user of each row.
    n_users: U.

  Returns:
    (order, label): `order` sorts rows by user then a random key (the file
    order of MMRec's data); label int8 [n] for the rows in that order: per
    user with n rows, n < 10 -> n-2/1/1 train/valid/test, else
    vt = int(0.2 n), valid = vt // 2, test = vt - valid.
  """
  order = np.lexsort((rng.random(user.size), user))
  return order, importer.split_labels(user[order], n_users)


def _features(rng: np.random.Generator, factors: np.ndarray, dim: int,
              noise: float, chunk: int = 4096) -> np.ndarray:
  """float32 [I, dim] = factors @ W + noise; written in row chunks."""
  w = (rng.standard_normal((factors.shape[1], dim)) /
       np.sqrt(factors.shape[1])).astype(np.float32)
  out = np.empty((factors.shape[0], dim), np.float32)
  for s in range(0, factors.shape[0], chunk):
    out[s:s + chunk] = rng.standard_normal((min(chunk, out.shape[0] - s), dim),
                                           dtype=np.float32)
    out[s:s + chunk] *= noise
    out[s:s + chunk] += factors[s:s + chunk] @ w
  return out


def generate(shape: Shape, out_dir: str | os.PathLike, *, seed: int = 0,
             name: str | None = None) -> Path:
  """Writes an MMRec folder: `<name>.inter`, image_feat.npy, text_feat.npy.

  Args:
    shape: sizes (see PRESETS).
    out_dir: folder to create or overwrite files in.
    seed: everything is a deterministic function of (shape, seed).
    name: dataset name; defaults to the folder name, so that
      `data_prep convert --src out_dir` finds the .inter file.

  Returns:
    The path of the .inter file.
  """
  out_dir = Path(out_dir)
  name = name or out_dir.resolve().name
  rng = np.random.default_rng(seed)
  scale = np.float32(BETA / np.sqrt(FACTOR_DIM))
  user_f = rng.standard_normal((shape.n_users, FACTOR_DIM), dtype=np.float32)
  item_f = rng.standard_normal((shape.n_items, FACTOR_DIM), dtype=np.float32)
  log_pop = (POP_SIGMA * rng.standard_normal(shape.n_items)).astype(np.float32)

  def logits_fn(s: int, e: int) -> np.ndarray:
    return (user_f[s:e] * scale) @ item_f.T + log_pop

  degrees = user_degrees(rng, shape)
  user = np.repeat(np.arange(shape.n_users), degrees)
  item = sample_items(rng, logits_fn, degrees, shape.n_items)
  item = cover_items(rng, item, shape.n_items)
  order, label = mmrec_split(rng, user, shape.n_users)
  user, item = user[order], item[order]
  n = user.size
  table = pd.DataFrame({
      'userID': user, 'itemID': item,
      'rating': rng.integers(1, 6, n),
      'timestamp': rng.integers(1_300_000_000, 1_400_000_000, n),
      'x_label': label})
  feat_v = _features(rng, item_f, shape.dim_v, NOISE[0])
  feat_t = _features(rng, item_f, shape.dim_t, NOISE[1])
  # MiniLM text features are unit-norm rows; mimic that.
  feat_t /= np.linalg.norm(feat_t, axis=1, keepdims=True)

  out_dir.mkdir(parents=True, exist_ok=True)
  inter_path = out_dir / f'{name}.inter'
  table.to_csv(inter_path, sep='\t', index=False)
  np.save(out_dir / 'image_feat.npy', feat_v)
  np.save(out_dir / 'text_feat.npy', feat_t)
  info = dict(dataclasses.asdict(shape), seed=seed, name=name,
              factor_dim=FACTOR_DIM, beta=BETA, pop_sigma=POP_SIGMA,
              activity_sigma=ACTIVITY_SIGMA, noise=list(NOISE),
              generator='mentor_jax data_prep.synthetic')
  (out_dir / 'synth_meta.json').write_text(json.dumps(info, indent=1) + '\n')
  return inter_path

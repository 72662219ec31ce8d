"""Statistics over repeated runs and paired tests over users.

The math is pure functions of arrays (numpy + scipy.stats):

  summarize(values)         mean, sample std, Student-t 95% interval, n
  summary_of_runs(runs)     the 'summary' of a stacked workdir's result.json
  welch(a, b)               Welch's t-test between two sets of runs
  paired_users(pa, pb, m)   paired t-test and Wilcoxon over common users

and one loader, `load_per_user`, for the per-user metrics a trainer leaves
in `<dir>/per_user_test.npz` (arrays `users`, ascending int64, and one
float64 array per metric). A workdir is either a single run (result.json
holds the metrics) or a stack of K runs trained as one program (result.json
holds {'runs': [...], 'summary': ...} and each run is laid out as a single
workdir in `<wd>/runs/<k>/`); `rundirs.run_dirs` tells them apart.

Conventions (the edge cases, so that a table never shows a made-up number):
* One value: std = 0 and the 95% interval is [nan, nan]: a t interval needs
  n - 1 >= 1 degrees of freedom, and a zero-width [mean, mean] would read
  as certainty. (Python's json writes and reads NaN; the report prints n/a.)
* Welch's test needs 2 runs per side; with fewer, t and p are nan.
* When every paired difference is zero (identical groups), t = 0 and both
  p = 1: the data show no difference at all. scipy returns nan (t-test) or
  warns (Wilcoxon) there.
* Runs with no spread on either side (all values equal) give t = 0, p = 1
  when the two values agree and t = +-inf, p = 0 when they differ (Welch's
  df is nan then): no variation was seen, only the difference.
"""

from __future__ import annotations

import math
import pathlib
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sp_stats

from mentor_jax import errors
from mentor_jax import rundirs

SPLITS = ('valid', 'test')


def summarize(values: Sequence[float]) -> dict[str, Any]:
  """Mean, sample std (ddof=1), Student-t 95% interval and count of `values`.

  Returns:
    {'mean', 'std', 'ci95': [low, high], 'n'}, plain Python numbers (ready
    for JSON). n = 1: std 0, ci95 [nan, nan] (see the module docstring).

  Raises:
    ValueError: `values` is empty or not one-dimensional.
  """
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f'summarize needs a non-empty list of numbers, got '
                     f'shape {x.shape}')
  n = int(x.size)
  mean = float(x.mean())
  if n == 1:
    return {'mean': mean, 'std': 0.0, 'ci95': [math.nan, math.nan], 'n': 1}
  std = float(x.std(ddof=1))
  half = float(sp_stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
  return {'mean': mean, 'std': std, 'ci95': [mean - half, mean + half],
          'n': n}


def summary_of_runs(runs: Sequence[Mapping[str, Any]]
                    ) -> dict[str, dict[str, dict[str, Any]]]:
  """{'valid': {metric: summarize(...)}, 'test': {...}} over `runs`.

  Args:
    runs: per-run dicts with 'valid' and 'test' mappings of metric -> float
      (result.json's 'runs' entries; other keys are ignored).

  Raises:
    ValueError: no runs, or the runs do not report the same metrics.
  """
  if not runs:
    raise ValueError('summary_of_runs needs at least one run')
  out = {}
  for split in SPLITS:
    names = list(runs[0][split])
    for k, run in enumerate(runs):
      if set(run[split]) != set(names):
        raise ValueError(
            f'run {k} reports {split} metrics {sorted(run[split])}, run 0 '
            f'reports {sorted(names)}: every run must report the same ones')
    out[split] = {m: summarize([float(r[split][m]) for r in runs])
                  for m in names}
  return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """Welch's unequal-variance t-test of mean(a) against mean(b).

  Returns:
    {'t', 'p' (two-sided), 'df' (Welch-Satterthwaite), 'mean_diff'
    (mean a - mean b), 'n_a', 'n_b'}; t, p and df are nan with fewer than
    2 values on a side.
  """
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  out = {'mean_diff': float(a.mean() - b.mean()) if a.size and b.size
         else math.nan, 'n_a': int(a.size), 'n_b': int(b.size)}
  if a.size < 2 or b.size < 2:
    return dict(out, t=math.nan, p=math.nan, df=math.nan)
  if np.ptp(a) == 0 and np.ptp(b) == 0:
    # No spread at all (exact test: a computed variance of 3 x 0.1 is 1e-36,
    # not 0, and would give a made-up t).
    if a[0] == b[0]:
      return dict(out, t=0.0, p=1.0, df=math.nan)
    return dict(out, t=math.copysign(math.inf, a[0] - b[0]), p=0.0,
                df=math.nan)
  res = sp_stats.ttest_ind(a, b, equal_var=False)
  return dict(out, t=float(res.statistic), p=float(res.pvalue),
              df=float(res.df))


def holm(p_values: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjustment of p-values for multiple comparisons.

  The i-th smallest of m p-values becomes max over j <= i of
  min(1, (m - j + 1) p_(j)); rejecting where the adjusted p < alpha keeps
  the family-wise error rate at alpha. NaN p-values are left out of m and
  stay NaN.

  Returns:
    float64 [m], in the order given.
  """
  p = np.asarray(p_values, dtype=np.float64)
  out = np.full(p.shape, math.nan)
  valid = np.flatnonzero(~np.isnan(p))
  order = valid[np.argsort(p[valid], kind='stable')]
  m = order.size
  scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
  out[order] = np.maximum.accumulate(scaled)
  return out


def paired_users(per_user_a: Mapping[str, np.ndarray],
                 per_user_b: Mapping[str, np.ndarray],
                 metric: str) -> dict[str, Any]:
  """Paired t-test and Wilcoxon signed-rank test of `metric` over users.

  Args:
    per_user_a, per_user_b: `load_per_user` results: 'users' (ascending)
      and metric arrays, each already the mean over its group's runs.
    metric: e.g. 'recall@20'.

  Returns:
    {'t', 'p' (paired t, two-sided), 'wilcoxon_p' (two-sided, zero
    differences dropped: scipy's 'wilcox' rule), 'n_users' (common users),
    'mean_diff' (mean over common users of a - b), 'n_only_a', 'n_only_b'
    (users on one side only, left out)}.

  Raises:
    KeyError: a side has no `metric` array.
    ValueError: no user in common.
  """
  for name, side in (('A', per_user_a), ('B', per_user_b)):
    if metric not in side:
      raise KeyError(f'side {name} has no per-user {metric!r}; it has '
                     f'{sorted(k for k in side if k != "users")}')
  users_a = np.asarray(per_user_a['users'])
  users_b = np.asarray(per_user_b['users'])
  common, ia, ib = np.intersect1d(users_a, users_b, assume_unique=True,
                                  return_indices=True)
  if common.size == 0:
    raise ValueError('the two sides have no test user in common: are they '
                     'runs on the same dataset and split?')
  d = (np.asarray(per_user_a[metric], np.float64)[ia]
       - np.asarray(per_user_b[metric], np.float64)[ib])
  out = {'n_users': int(common.size), 'mean_diff': float(d.mean()),
         'n_only_a': int(users_a.size - common.size),
         'n_only_b': int(users_b.size - common.size)}
  if not np.any(d):  # Identical: no difference to test.
    return dict(out, t=0.0, p=1.0, wilcoxon_p=1.0)
  if d.size < 2:
    return dict(out, t=math.nan, p=math.nan, wilcoxon_p=math.nan)
  with warnings.catch_warnings():  # Constant shift: t = +-inf, p = 0.
    warnings.simplefilter('ignore', RuntimeWarning)
    t = sp_stats.ttest_1samp(d, 0.0)  # = ttest_rel(a, b) on the pairs.
    w = sp_stats.wilcoxon(d)
  return dict(out, t=float(t.statistic), p=float(t.pvalue),
              wilcoxon_p=float(w.pvalue))


def _read_per_user(path: pathlib.Path) -> dict[str, np.ndarray]:
  """One per_user_*.npz, checked: users ascending ints, one float per user."""
  if not path.exists():
    raise errors.ResultFileError(
        f'{path} not found: the paired test over users needs each run\'s '
        'per-user metrics at the best epoch (written by the trainer at the '
        'end of training). Compare over runs only with --no-paired.')
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile,
          zlib.error) as e:
    raise errors.ResultFileError(
        f'{path}: not a readable .npz ({type(e).__name__}: {e}); it is '
        'truncated or damaged. Rerun the training command of its workdir, '
        'which writes it again from the best checkpoint') from e
  epoch = arrays.pop(rundirs.PER_USER_EPOCH, None)
  if epoch is not None:
    _check_per_user_epoch(path, epoch)
  users = arrays.get('users')
  if users is None:
    raise errors.ResultFileError(f'{path}: no array "users"; found '
                                 f'{sorted(arrays)}')
  if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
    raise errors.ResultFileError(
        f'{path}: field users: expected a 1-D integer array, found '
        f'{users.dtype} of shape {users.shape}')
  if users.size > 1 and np.any(np.diff(users) <= 0):
    raise errors.ResultFileError(f'{path}: field users: expected strictly '
                                 'ascending user ids (no repeats)')
  for name, values in arrays.items():
    if name != 'users' and (values.shape != users.shape or not
                            np.issubdtype(values.dtype, np.floating)):
      raise errors.ResultFileError(
          f'{path}: field {name}: expected {users.size} floats (one per '
          f'user), found {values.dtype} of shape {values.shape}')
  return arrays


def _check_per_user_epoch(path: pathlib.Path, epoch: np.ndarray) -> None:
  """Refuses a per-user file of another epoch than its run's result.json
  names: a paired test would pair the wrong epoch."""
  if epoch.ndim != 0 or not np.issubdtype(epoch.dtype, np.integer):
    raise errors.ResultFileError(
        f'{path}: field {rundirs.PER_USER_EPOCH}: expected one integer, '
        f'found {epoch.dtype} of shape {epoch.shape}')
  result = rundirs.read_result(path.parent)
  best = None if result is None else result.get('best_epoch')
  if best is not None and best != int(epoch):
    raise errors.ResultFileError(
        f'{path} holds the per-user metrics of epoch {int(epoch)}, and '
        f'{path.parent / "result.json"} names best epoch {best}: rerun the '
        'training command of that workdir, which writes the file again from '
        'its best checkpoint')


def load_per_user(dirs: str | pathlib.Path | Sequence[str | pathlib.Path],
                  split: str = 'test') -> dict[str, np.ndarray]:
  """Per-user metrics of one workdir or a group, averaged over its runs.

  Args:
    dirs: a workdir (single or stacked) or several (a group whose runs are
      pooled); every run counts once in the mean.
    split: reads `per_user_<split>.npz` of each run.

  Returns:
    {'users': int64 array, metric: float64 array of the mean over runs}.

  Raises:
    ResultFileError: a file is missing or malformed, or two runs disagree
      on the users or the metrics (the message names both files).
  """
  if isinstance(dirs, (str, pathlib.Path)):
    dirs = [dirs]
  paths = [d / f'per_user_{split}.npz' for w in dirs
           for d in rundirs.run_dirs(w)]
  if not paths:
    raise ValueError('load_per_user needs at least one workdir')
  first = _read_per_user(paths[0])
  total = {k: v.astype(np.float64) for k, v in first.items() if k != 'users'}
  for path in paths[1:]:
    arrays = _read_per_user(path)
    if not np.array_equal(arrays['users'], first['users']):
      raise errors.ResultFileError(
          f'{path} has {arrays["users"].size} users, {paths[0]} has '
          f'{first["users"].size}, and they are not the same users: '
          'runs to be averaged must share the dataset and its split')
    if set(arrays) != set(first):
      raise errors.ResultFileError(
          f'{path} has metrics {sorted(set(arrays) - {"users"})}, '
          f'{paths[0]} has {sorted(total)}')
    for k in total:
      total[k] += arrays[k]
  out = {k: v / len(paths) for k, v in total.items()}
  return dict(out, users=first['users'].astype(np.int64))

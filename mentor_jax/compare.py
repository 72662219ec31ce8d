"""B against A: two sets of runs compared, with significance tests.

  python -m mentor_jax.report --compare runs/freedom runs/mentor
  python -m mentor_jax.report --compare runs/a1,runs/a2 runs/b1,runs/b2

Per metric (recall and ndcg @10 and @20, test split unless --split valid):
the mean of A and of B, the gain of B over A ((B - A) / A), Welch's t-test
over runs (needs 2 runs a side) and the paired t-test and Wilcoxon test
over users (each run's `per_user_test.npz`; a user's value is the mean over
the side's runs); `*` marks p < 0.05, as the MENTOR paper's Table 2 does.
A side may be several workdirs joined by commas, whose runs are pooled.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from mentor_jax import errors
from mentor_jax import rundirs
from mentor_jax import stats
from mentor_jax import workdir as workdir_lib

METRICS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')


def fmt(x: float | None) -> str:
  return '' if x is None else f'{x:.4f}'


def mean_std(summary: dict[str, Any] | None) -> str:
  if summary is None:
    return ''
  return f'{summary["mean"]:.4f} ± {summary["std"]:.4f}'


def load_side(workdirs: Sequence[pathlib.Path]) -> list[dict[str, Any]]:
  """The finished runs of one `--compare` side, pooled over its workdirs.

  Returns:
    Per run: {'dir' (the run's folder), 'config', 'result' (its single-run
    result: 'valid', 'test', ...), 'source' (the result.json it came
    from), 'data_sha256' (the dataset's digest; None in runs from before
    result.json recorded it)}.

  Raises:
    UserError: a workdir is missing or has not finished (no result.json).
  """
  runs = []
  for workdir in workdirs:
    if not workdir.is_dir():
      raise errors.UserError(f'{workdir}: no such workdir')
    top = rundirs.read_result(workdir)
    if top is None:
      raise errors.ResultFileError(
          f'{workdir / "result.json"} not found: the run has not finished '
          '(or is still running); --compare needs finished runs')
    entries = top['runs'] if 'runs' in top else [top]
    for d, entry in zip(rundirs.run_dirs(workdir), entries):
      runs.append({'dir': d,
                   'config': rundirs.read_json_object(d / 'config.json'),
                   'result': entry, 'source': workdir / 'result.json',
                   'data_sha256': top.get('data_sha256')})
  return runs


def check_same_data(runs: dict[str, list[dict[str, Any]]]) -> None:
  """Refuses two datasets that share a name but not their content.

  Raises:
    UserError: the runs' result.json files record different data digests.
  """
  digests = {}
  for side, side_runs in runs.items():
    for run in side_runs:
      if run['data_sha256'] is not None:
        digests.setdefault(run['data_sha256'], (side, run['source']))
  if len(digests) > 1:
    (d1, (s1, f1)), (d2, (s2, f2)) = list(digests.items())[:2]
    raise errors.UserError(
        f'the runs compared are on two datasets of the same name but '
        f'different content: {f1} (side {s1}) records data_sha256 '
        f'{d1[:12]}…, {f2} (side {s2}) {d2[:12]}…; the paired tests would '
        'pair unrelated users. Compare runs on one dataset file')


def _runs(n: int) -> str:
  return f'{n} run' if n == 1 else f'{n} runs'


def _fmt_p(p: float) -> str:
  """A p-value cell: n/a for nan, `*` for p < 0.05."""
  if math.isnan(p):
    return 'n/a'
  text = f'{p:.1e}' if p < 1e-4 else f'{p:.4f}'
  return text + ('*' if p < 0.05 else '')


def compare(side_a: Sequence[pathlib.Path], side_b: Sequence[pathlib.Path],
            *, split: str = 'test', paired: bool = True,
            metrics: Sequence[str] = METRICS) -> str:
  """The Markdown comparison of B against A (see the module docstring).

  Raises:
    UserError: a side is unfinished, a file is missing or malformed, or the
      two sides are on different datasets.
  """
  for name, side in (('A', side_a), ('B', side_b)):
    if not side:
      raise errors.UserError(f'--compare: side {name} names no workdir')
  runs = {'A': load_side(side_a), 'B': load_side(side_b)}
  datasets = {name: sorted({r['config'].get('dataset') for r in side})
              for name, side in runs.items()}
  if len(set(datasets['A']) | set(datasets['B'])) > 1:
    raise errors.UserError(
        f'the runs compared are on different datasets (A: '
        f'{", ".join(map(str, datasets["A"]))}; B: '
        f'{", ".join(map(str, datasets["B"]))}): compare runs on one dataset')
  check_same_data(runs)
  values = {}
  for name, side in runs.items():
    for run in side:
      found = run['result'].get(split, {})
      missing = [m for m in metrics if m not in found]
      if missing:
        raise errors.ResultFileError(
            f'{run["source"]}: run {run["dir"]} has no {split} '
            f'{", ".join(missing)}; it has {sorted(found)}')
    values[name] = {m: [float(r['result'][split][m]) for r in side]
                    for m in metrics}
  per_user = {}
  if paired:
    for name, side in (('A', side_a), ('B', side_b)):
      per_user[name] = stats.load_per_user(side, split)
      missing = [m for m in metrics if m not in per_user[name]]
      if missing:
        first = rundirs.run_dirs(side[0])[0] / f'per_user_{split}.npz'
        raise errors.ResultFileError(
            f'{first} (and every per-user file of side {name}): no per-user '
            f'{", ".join(missing)}; found '
            f'{sorted(k for k in per_user[name] if k != "users")}')
  n_a, n_b = len(runs['A']), len(runs['B'])
  lines = [
      workdir_lib.PAGE_MARKER,
      '# B against A',
      '',
      f'A: {", ".join(f"`{d}`" for d in side_a)} ({_runs(n_a)}). '
      f'B: {", ".join(f"`{d}`" for d in side_b)} ({_runs(n_b)}). '
      f'Dataset {datasets["A"][0]}, {split} split, each run\'s metrics at '
      'its best-validation epoch; gain = (mean B - mean A) / mean A.',
      '',
      f'| metric | mean A ({_runs(n_a)}) | mean B ({_runs(n_b)}) | gain | '
      'Welch p (runs) | paired t p (users) | Wilcoxon p (users) |',
      '|---|---|---|---|---|---|---|',
  ]
  users = None
  for m in metrics:
    a, b = values['A'][m], values['B'][m]
    cells = []
    for side in (a, b):
      summary = stats.summarize(side)
      cells.append(mean_std(summary) if len(side) > 1
                   else fmt(summary['mean']))
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    gain = (f'{100 * (mean_b - mean_a) / mean_a:+.2f}%' if mean_a
            else 'n/a')
    welch = stats.welch(b, a)
    if paired:
      test = stats.paired_users(per_user['B'], per_user['A'], m)
      users = test
      paired_cells = [_fmt_p(test['p']), _fmt_p(test['wilcoxon_p'])]
    else:
      paired_cells = ['not run', 'not run']
    lines.append('| ' + ' | '.join(
        [m, *cells, gain, _fmt_p(welch['p']), *paired_cells]) + ' |')
  notes = ['`*`: p < 0.05 (two-sided), as in the MENTOR paper\'s Table 2.']
  if n_a < 2 or n_b < 2:
    notes.append(
        f'Welch p: n/a. Welch\'s t-test over runs needs at least 2 runs on '
        f'each side; A has {n_a}, B has {n_b}. Train more seeds (a stacked '
        'workdir) to test over runs.')
  else:
    notes.append('Welch p: Welch\'s unequal-variance t-test over the runs '
                 '(each run one value).')
  if users is not None:
    notes.append(
        f'Paired p: over the {users["n_users"]} {split} users of both sides; '
        'a user\'s value is the mean over the side\'s runs of their '
        'per-user metric (per_user_' + split + '.npz). Wilcoxon drops users '
        'whose difference is 0.')
    if users['n_only_a'] or users['n_only_b']:
      notes.append(f'Left out: {users["n_only_b"]} users only in A\'s files, '
                   f'{users["n_only_a"]} only in B\'s.')
  else:
    notes.append('Paired tests over users: not run (--no-paired).')
  for name, side in runs.items():
    # From the configs, so that pooled single runs are caught too.
    cells = {json.dumps(o, sort_keys=True)
             for o in rundirs.overrides_of([r['config'] for r in side])}
    if len(cells) > 1:
      notes.append(f'Note: side {name} pools runs with different settings '
                   f'({"; ".join(sorted(cells))}).')
  lines += [''] + [f'- {note}' for note in notes]
  return '\n'.join(lines) + '\n'


def main(args: argparse.Namespace) -> int:
  """`report --compare A B`: prints the table, and writes it to a named
  --out."""
  sides = [[pathlib.Path(x) for x in side.split(',') if x]
           for side in args.compare]
  if args.out is not None:
    workdir_lib.check_page_output(args.out, overwrite=args.overwrite)
  page = compare(*sides, split=args.split, paired=not args.no_paired)
  print(page.removeprefix(workdir_lib.PAGE_MARKER + '\n'), end='')
  if args.out is not None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text_atomic(args.out, page)
    print(f'{args.out}: comparison')
  return 0

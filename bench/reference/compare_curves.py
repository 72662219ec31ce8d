"""Ours against MMRec's own code, curve beside curve, seeds on each side.

  python bench/reference/compare_curves.py --model slmrec \
      --ours runs/slmrec_tiktok \
      --mmrec mmrec_slmrec_s0.log mmrec_slmrec_s1.log mmrec_slmrec_s2.log \
      --png docs/curves/slmrec_tiktok.png --out docs/curves/slmrec_tiktok.md

`--ours` is a stacked workdir (runs/<k>/metrics.jsonl, one run per seed) or
several single-run workdirs; `--mmrec` are the logs of
`mmrec_worker.py --epochs N --log-metrics` (their `BENCH_RESULT` line), one
per seed. Over the epochs both sides have:

* loss: the mean training loss per batch (ours: the sum of the logged
  parts, which are means over the epoch's steps; MMRec: its epoch loss, a
  sum over batches, / batches per epoch). Per epoch from --from-epoch on:
  |mean ours - mean MMRec| / mean MMRec, beside MMRec's own seed spread
  (max - min) / mean;
* validation Recall@20 (the early-stopping metric): the mean over the last
  --last epochs per seed, 3 values a side, and Welch's t-test over them;
* each curve stopped as MMRec's trainer stops (`--patience` epochs without
  a better rounded valid Recall@20): its best epoch and test Recall@20
  there, Welch's t-test over the seeds.

`--official` instead of `--mmrec`: the logs of `official_worker.py` (DiffMM,
MMSSL), whose code tests on the TEST split every epoch and has no
validation pass: both sides' TEST Recall@20 curves are compared then (in
the 'valid' columns), and the early-stop table is left out (the official
code selects on test). Its loss, as a mean per batch
(`official_batch_mean`): DiffMM logs the sum over its ceil(n / B) batches
divided by n // B (Main.py's `steps`: 58 for TikTok's 59 batches, so its
epoch values are 59/58 of the mean), MMSSL the sum over its n // B + 1.

Writes a Markdown table (--out), a two-panel plot (--png) and the curves
themselves (--csv).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from mentor_jax import rundirs  # pylint: disable=g-import-not-at-top
from mentor_jax import stats  # pylint: disable=g-import-not-at-top

METRIC = 'recall@20'


def ours_curves(workdirs: list[pathlib.Path],
                parts: list[str] | None = None) -> list[dict[str, list]]:
  """Per run: {'loss': [...], 'valid': [...]} by epoch; the loss is the sum
  of the logged `parts` (all of them by default)."""
  out = []
  for workdir in workdirs:
    for run in rundirs.run_dirs(workdir):
      records = rundirs.read_metrics(run)
      pick = lambda r: sum(v for k, v in r['loss'].items()
                           if parts is None or k in parts)
      out.append({'loss': [pick(r) for r in records],
                  'valid': [r['valid'][METRIC] for r in records],
                  'test': [r['test'][METRIC] for r in records]})
  return out


def bench_result(log: pathlib.Path) -> dict:
  """The last `BENCH_RESULT` line of a worker's log."""
  lines = [l for l in log.read_text().splitlines()
           if l.startswith('BENCH_RESULT ')]
  if not lines:
    raise SystemExit(f'{log}: no BENCH_RESULT line (the worker did not '
                     'finish)')
  return json.loads(lines[-1].removeprefix('BENCH_RESULT '))


def mmrec_curves(logs: list[pathlib.Path]) -> list[dict[str, list]]:
  out = []
  for log in logs:
    result = bench_result(log)
    n_batches = result['batches_per_epoch']
    per_epoch = result['metrics_per_epoch']
    out.append({'loss': [e['loss'] / n_batches for e in per_epoch],
                'valid': [e['valid'][METRIC] for e in per_epoch],
                'test': [e['test'][METRIC] for e in per_epoch]})
  return out


def official_batch_mean(result: dict) -> float:
  """The factor that makes an official epoch loss a mean per batch."""
  n, args = result['n_train'], result['official_args']
  if result['codebase'] == 'diffmm':
    batch = args['batch']
    return (n // batch) / -(-n // batch)  # its divisor / its batches
  return 1.0 / (n // args['batch_size'] + 1)  # MMSSL: a sum over batches


def official_curves(logs: list[pathlib.Path]) -> list[dict[str, list]]:
  """official_worker.py's per-epoch loss (a mean per batch) and test
  metric; the test curve stands in for the validation one (the official
  code has none)."""
  out = []
  for log in logs:
    result = bench_result(log)
    per_epoch = result['metrics_per_epoch']
    scale = official_batch_mean(result)
    test = [e['test'][METRIC] for e in per_epoch]
    out.append({'loss': [e['loss'] * scale for e in per_epoch],
                'valid': test, 'test': test})
  return out


def early_stop(valid: list[float], patience: int) -> int:
  """The best epoch of MMRec's rule (`utils.early_stopping` on its rounded
  metric): stop once more than `patience` epochs did not beat the best."""
  best, best_epoch, bad = -1.0, -1, 0
  for epoch, value in enumerate(valid):
    value = round(value, 4)
    if value > best:
      best, best_epoch, bad = value, epoch, 0
    else:
      bad += 1
      if bad > patience:
        break
  return best_epoch


def compare(ours: list[dict], mmrec: list[dict], *, from_epoch: int,
            last: int, patience: int = 20) -> dict:
  n = min(len(c['loss']) for c in ours + mmrec)
  loss_o = np.mean([c['loss'][:n] for c in ours], axis=0)
  loss_m = np.array([c['loss'][:n] for c in mmrec])
  rel = np.abs(loss_o - loss_m.mean(0)) / loss_m.mean(0)
  spread = (loss_m.max(0) - loss_m.min(0)) / loss_m.mean(0)
  window = slice(max(n - last, 0), n)
  tail_o = [float(np.mean(c['valid'][window])) for c in ours]
  tail_m = [float(np.mean(c['valid'][window])) for c in mmrec]
  # Each curve as MMRec's trainer would have stopped it: the test metric at
  # its best-valid epoch.
  stops = {name: [early_stop(c['valid'][:n], patience) for c in side]
           for name, side in (('ours', ours), ('mmrec', mmrec))}
  at_stop = {name: [c['test'][e] for c, e in zip(side, stops[name])]
             for name, side in (('ours', ours), ('mmrec', mmrec))}
  return {
      'best_epochs_ours': stops['ours'], 'best_epochs_mmrec': stops['mmrec'],
      'test_at_stop_ours': at_stop['ours'],
      'test_at_stop_mmrec': at_stop['mmrec'],
      'welch_test_at_stop': stats.welch(at_stop['ours'], at_stop['mmrec']),
      'epochs': n, 'from_epoch': from_epoch, 'last': min(last, n),
      'loss_rel_diff_max': float(rel[from_epoch:].max()),
      'loss_rel_diff_median': float(np.median(rel[from_epoch:])),
      'mmrec_loss_seed_spread_median': float(np.median(spread[from_epoch:])),
      'loss_ours': loss_o.tolist(), 'loss_mmrec': loss_m.mean(0).tolist(),
      'valid_tail_ours': tail_o, 'valid_tail_mmrec': tail_m,
      'welch': stats.welch(tail_o, tail_m),
  }


def markdown(model: str, out: dict) -> str:
  w, w_stop = out['welch'], out['welch_test_at_stop']
  fmt = lambda xs: ', '.join(f'{x:.4f}' for x in xs)
  mean = lambda key: f'{statistics.fmean(out[key]):.4f}'
  return '\n'.join([
      f'| {model} | {out["epochs"]} | '
      f'{100 * out["loss_rel_diff_median"]:.2f}% / '
      f'{100 * out["loss_rel_diff_max"]:.2f}% | '
      f'{100 * out["mmrec_loss_seed_spread_median"]:.2f}% | '
      f'{fmt(out["valid_tail_ours"])} | {fmt(out["valid_tail_mmrec"])} | '
      f'{mean("valid_tail_ours")} vs {mean("valid_tail_mmrec")} | '
      f'{w["p"]:.3f} |',
      '',
      STOP_HEADER,
      f'| {model} | {", ".join(map(str, out["best_epochs_ours"]))} | '
      f'{", ".join(map(str, out["best_epochs_mmrec"]))} | '
      f'{fmt(out["test_at_stop_ours"])} | {fmt(out["test_at_stop_mmrec"])} | '
      f'{mean("test_at_stop_ours")} vs {mean("test_at_stop_mmrec")} | '
      f'{w_stop["p"]:.3f} |'])


HEADER = ('| model | epochs | loss: median / max rel. diff of the means '
          '(from epoch {from_epoch}) | MMRec seed spread (median) | valid '
          'R@20, mean of the last {last} epochs: ours per seed | MMRec per '
          'seed | means | Welch p |\n|---|---|---|---|---|---|---|---|')
STOP_HEADER = ('| model | best epoch at MMRec\'s early stop (patience 20): '
               'ours | MMRec | test R@20 there: ours | MMRec | means | Welch '
               'p |\n|---|---|---|---|---|---|---|')


def write_csv(path: pathlib.Path, ours: list[dict], mmrec: list[dict]
              ) -> None:
  """Every curve by epoch (blank where a run had stopped): the plot's data."""
  sides = [('ours', c) for c in ours] + [('mmrec', c) for c in mmrec]
  head = ['epoch'] + [f'{key}_{name}{k}' for key in ('loss', 'valid')
                      for name, k in _numbered(sides)]
  n = max(len(c['loss']) for _, c in sides)
  cell = lambda xs, e: f'{xs[e]:.6g}' if e < len(xs) else ''
  rows = [','.join([str(e)] + [cell(c[key], e) for key in ('loss', 'valid')
                               for _, c in sides]) for e in range(n)]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('\n'.join([','.join(head)] + rows) + '\n')


def _numbered(sides):
  seen: dict[str, int] = {}
  for name, _ in sides:
    seen[name] = seen.get(name, -1) + 1
    yield name, seen[name]


def plot(model: str, ours: list[dict], mmrec: list[dict],
         png: pathlib.Path, side: str = 'MMRec\'s code',
         split: str = 'valid') -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, label in ((axes[0], 'loss', 'training loss per batch'),
                         (axes[1], 'valid', f'{split} {METRIC}')):
    for curves, color, name in ((ours, 'tab:blue', 'mentor_jax'),
                                (mmrec, 'tab:orange', side)):
      for k, c in enumerate(curves):
        ax.plot(c[key], color=color, alpha=0.8, lw=1,
                label=f'{name} ({len(curves)} seeds)' if k == 0 else None)
    ax.set_xlabel('epoch')
    ax.set_ylabel(label)
    ax.legend()
  fig.suptitle(f'{model} on TikTok: mentor_jax vs {side}')
  fig.tight_layout()
  png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(png, dpi=110)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', required=True)
  p.add_argument('--ours', nargs='+', required=True, type=pathlib.Path)
  side = p.add_mutually_exclusive_group(required=True)
  side.add_argument('--mmrec', nargs='+', type=pathlib.Path)
  side.add_argument('--official', nargs='+', type=pathlib.Path,
                    help='official_worker.py logs (test curves compared)')
  p.add_argument('--from-epoch', type=int, default=10)
  p.add_argument('--last', type=int, default=40)
  p.add_argument('--patience', type=int, default=20,
                 help='MMRec\'s stopping_step, for the early-stop table')
  p.add_argument('--parts',
                 help='comma-separated loss parts of ours to sum (default: '
                 'all), to match what the other side logs, e.g. bpr,reg for '
                 'DiffMM\'s "Loss"')
  p.add_argument('--png', type=pathlib.Path)
  p.add_argument('--out', type=pathlib.Path)
  p.add_argument('--csv', type=pathlib.Path,
                 help='every curve by epoch (the plot\'s data)')
  args = p.parse_args(argv)
  ours = ours_curves(args.ours,
                     args.parts.split(',') if args.parts else None)
  if args.official:
    mmrec = official_curves(args.official)
    for c in ours:  # test against test: the official code has no valid
      c['valid'] = c['test']
  else:
    mmrec = mmrec_curves(args.mmrec)
  out = compare(ours, mmrec, from_epoch=args.from_epoch, last=args.last,
                patience=args.patience)
  text = (HEADER.format(from_epoch=args.from_epoch, last=out['last']) + '\n'
          + markdown(args.model, out) + '\n')
  if args.official:  # no early-stop table: the official code selects on test
    text = text.split('\n\n')[0].replace('MMRec', 'official').replace(
        'valid R@20', 'test R@20') + '\n'
  print(text, end='')
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + '\n```json\n' + json.dumps(
        {k: v for k, v in out.items() if not k.startswith('loss_o')
         and not k.startswith('loss_m')}, indent=1) + '\n```\n')
  if args.png:
    plot(args.model, ours, mmrec, args.png,
         *(('the official code', 'test') if args.official else ()))
  if args.csv:
    write_csv(args.csv, ours, mmrec)
  return 0


if __name__ == '__main__':
  sys.exit(main())

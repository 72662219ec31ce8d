"""The report's learning curves: valid and test metric per epoch, the total
loss and each loss part, one colour per run (matplotlib, the `report`
extra)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from mentor_jax import rundirs
from mentor_jax import workdir as workdir_lib


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend; None without
  matplotlib (the `report` extra), so that figures are skipped, not
  fatal."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return plt


def save_png(fig, path: pathlib.Path, dpi: int = 100) -> None:
  """Writes `fig` to `path` whole or not at all (a temporary name, then a
  rename) and closes it."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp.png')
  try:
    fig.savefig(tmp, dpi=dpi, metadata={'Software': workdir_lib.PNG_SOFTWARE})
    tmp.replace(path)
  finally:
    plt.close(fig)
    tmp.unlink(missing_ok=True)


def run_label(run_dir: pathlib.Path, all_dirs: Sequence[pathlib.Path]) -> str:
  """The run's folder name, with its parent when two runs share a name."""
  names = [d.absolute().name for d in all_dirs]
  name = run_dir.absolute().name
  if names.count(name) > 1:
    return f'{run_dir.absolute().parent.name}/{name}'
  return name


def plot_curves(runs: Sequence[tuple[str, dict[str, Any],
                                     list[dict[str, Any]]]],
                path: pathlib.Path) -> None:
  """Writes the learning curves of `runs` to the PNG `path`.

  Args:
    runs: (label, config, metrics.jsonl records) per run.
    path: the PNG to write (atomically).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # No display needed; call before pyplot.
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  # Records without loss parts (hand-written logs) still plot their metrics.
  parts = sorted({k for _, _, log in runs for r in log
                  for k in r.get('loss', {})})
  panels = ['valid', 'test', 'loss total'] + [f'loss: {k}' for k in parts]
  ncols = 3
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows),
                           squeeze=False, layout='constrained')
  axes = dict(zip(panels, axes.flat))
  for ax in list(fig.axes)[len(panels):]:
    ax.set_visible(False)
  metrics = sorted({c['valid_metric'] for _, c, _ in runs})
  for i, (label, config, log) in enumerate(runs):
    color = f'C{i % 10}'
    epochs = [r['epoch'] for r in log]
    metric = config['valid_metric']
    name = label if len(metrics) == 1 else f'{label} ({metric})'
    for split in ('valid', 'test'):
      axes[split].plot(epochs, [r[split][metric] for r in log], color=color,
                       marker='.' if len(log) < 40 else None, label=name)
    best = rundirs.best_from_log(log, metric)['best_epoch']
    best_record = next(r for r in log if r['epoch'] == best)
    axes['valid'].plot([best], [best_record['valid'][metric]], 'o',
                       color=color, markersize=9, fillstyle='none')
    totals = [(r['epoch'], sum(r['loss'].values())) for r in log
              if r.get('loss')]
    if totals:
      axes['loss total'].plot(*zip(*totals), color=color, label=name)
    for k in parts:
      points = [(r['epoch'], r['loss'][k]) for r in log
                if k in r.get('loss', {})]
      if points:
        axes[f'loss: {k}'].plot(*zip(*points), color=color, label=name)
  axes['valid'].set_title(f'valid {", ".join(metrics)} (o: best epoch)')
  axes['test'].set_title(f'test {", ".join(metrics)}')
  for title, ax in axes.items():
    if title.startswith('loss'):
      ax.set_title(title)
      values = [y for line in ax.get_lines() for y in line.get_ydata()]
      if values and min(values) > 0 and max(values) > 20 * min(values):
        ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.grid(alpha=0.3)
  axes['valid'].legend(fontsize='small')
  save_png(fig, path)

"""MENTOR's sensitivity figures (paper Figs. 5 and 7) from a study's search.

Fig. 5 is test Recall@20 and NDCG@20 against lambda_align
(`align_weight`); Fig. 7 is test Recall@20 over the pairs (p, lambda_f)
(`dropout`, `mask_weight_f`) and (tau, lambda_g) (`temp`,
`mask_weight_g`). A figure is drawn when the search varied its keys:
MENTOR's shipped grid varies (tau, lambda_g); `mentor-study --paper-grid`
searches the paper's whole grid (configs/paper.py `GRID`).

Each point is a searched cell with those values: when other keys varied
too, the one of them with the best validation metric (the others at
their best, as a search would pick them), its test metrics at its
best-valid epoch. A cell frozen by successive halving shows what it had
reached when frozen (marked). Points the search did not try stay blank.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np

from mentor_jax import plots

FIGURES = (
    ('fig5', ('align_weight',), 'lambda_align'),
    ('fig7_p_lambda_f', ('dropout', 'mask_weight_f'), '(p, lambda_f)'),
    ('fig7_tau_lambda_g', ('temp', 'mask_weight_g'), '(tau, lambda_g)'),
)
SHOWN = ('recall@20', 'ndcg@20')


def sensitivity(rows: list[dict[str, Any]], valid_metric: str
                ) -> list[dict[str, Any]]:
  """The figures the search `rows` (run_model's 'search') can draw.

  Returns:
    Per figure: {'name', 'title', 'keys', 'axes': [the values of each key,
    sorted], 'points': {'v1|v2': {'test': {metric: value}, 'cell',
    'frozen_after'}}}.
  """
  scored = [r for r in rows if valid_metric in r.get('valid', {})]
  out = []
  for name, keys, title in FIGURES:
    if not all(len({r['cell'].get(k) for r in scored} - {None}) > 1
               for k in keys):
      continue
    points: dict[str, dict[str, Any]] = {}
    for row in sorted(scored, key=lambda r: -r['valid'][valid_metric]):
      at = '|'.join(repr(row['cell'][k]) for k in keys)
      points.setdefault(at, {
          'test': {m: row['test'][m] for m in SHOWN},
          'cell': row['cell'], 'frozen_after': row.get('frozen_after')})
    axes = [sorted({r['cell'][k] for r in scored}) for k in keys]
    out.append({'name': name, 'title': title, 'keys': list(keys),
                'axes': axes, 'points': points})
  return out


def _value(figure: dict[str, Any], values: tuple[Any, ...],
           metric: str) -> tuple[float, bool]:
  """(the metric at the point, whether it was frozen); nan if untried."""
  point = figure['points'].get('|'.join(repr(v) for v in values))
  if point is None:
    return math.nan, False
  return point['test'][metric], point['frozen_after'] is not None


def markdown(figures: list[dict[str, Any]]) -> str:
  if not figures:
    return ('No sensitivity figure: MENTOR\'s search did not vary '
            'align_weight, (dropout, mask_weight_f) or (temp, '
            'mask_weight_g). `mentor-study --paper-grid` searches the '
            'paper\'s grid.\n')
  text = ['Test metrics at the best-valid epoch of the searched cell with '
          'these values (of several, the one best on validation); '
          '- untried; + frozen by successive halving (its metrics when '
          'frozen). In the official code lambda_f and p change nothing '
          '(its feature masking has no gradient: MENTOR_SPEC 2.4).', '']
  for fig in figures:
    text.append(f'## {fig["name"]}: {fig["title"]}')
    text.append('')
    if len(fig['keys']) == 1:
      text += [f'| {fig["keys"][0]} | ' + ' | '.join(SHOWN) + ' |',
               '|---' * (len(SHOWN) + 1) + '|']
      for v in fig['axes'][0]:
        cells = [_format(*_value(fig, (v,), m)) for m in SHOWN]
        text.append(f'| {v:g} | ' + ' | '.join(cells) + ' |')
    else:
      (a, b), (va, vb) = fig['keys'], fig['axes']
      text += [f'{SHOWN[0]}: rows {a}, columns {b}.', '',
               f'| {a} \\ {b} | ' + ' | '.join(f'{v:g}' for v in vb) + ' |',
               '|---' * (len(vb) + 1) + '|']
      for x in va:
        cells = [_format(*_value(fig, (x, y), SHOWN[0])) for y in vb]
        text.append(f'| {x:g} | ' + ' | '.join(cells) + ' |')
    text.append('')
  return '\n'.join(text)


def _format(value: float, frozen: bool) -> str:
  return '-' if math.isnan(value) else f'{value:.4f}' + ('+' if frozen else '')


def write_pngs(figures: list[dict[str, Any]],
               out_dir: pathlib.Path) -> list[pathlib.Path]:
  """One PNG per figure (curves for Fig. 5, heat maps for Fig. 7); none
  without matplotlib."""
  plt = plots.pyplot()
  if plt is None:
    return []
  written = []
  for fig_data in figures:
    keys, axes = fig_data['keys'], fig_data['axes']
    if len(keys) == 1:
      fig, panels = plt.subplots(1, len(SHOWN), figsize=(7, 3))
      for ax, metric in zip(panels, SHOWN):
        ys = [_value(fig_data, (v,), metric)[0] for v in axes[0]]
        ax.plot(axes[0], ys, 'o-')
        ax.set_xlabel(keys[0])
        ax.set_title(f'test {metric}')
        ax.grid(alpha=0.3)
    else:
      grid = np.array([[_value(fig_data, (x, y), SHOWN[0])[0]
                        for y in axes[1]] for x in axes[0]])
      fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(axes[1]),
                                      1.2 + 0.5 * len(axes[0])))
      image = ax.imshow(np.ma.masked_invalid(grid), cmap='viridis',
                        aspect='auto')
      ax.set_xticks(range(len(axes[1])), [f'{v:g}' for v in axes[1]])
      ax.set_yticks(range(len(axes[0])), [f'{v:g}' for v in axes[0]])
      ax.set_xlabel(keys[1])
      ax.set_ylabel(keys[0])
      ax.set_title(f'test {SHOWN[0]}')
      fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = out_dir / f'sensitivity_{fig_data["name"]}.png'
    plots.save_png(fig, path, dpi=120)
    written.append(path)
  return written

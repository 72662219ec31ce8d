"""A study's tables and figures, from its runs (study.py writes them).

In `<workdir>/tables/`, rewritten at the end of every finished study run
(the folder is the study's own):
- table2.md / table2.tex: test Recall and NDCG @10 and @20 per model, mean
  ± half-width of the 95 % Student-t interval over the seeds; the best mean
  in bold, the second underlined. With the reference model (MENTOR when it
  is in the study, else `--reference`): a row of its improvement over the best other model, and
  `*` on a model's value where the paired t-test over test users between
  the reference and that model is significant (p < 0.05) after Holm's
  correction over all the table's comparisons (models x metrics).
- table3.md / table3.tex: seconds per epoch and per evaluation (medians
  over the final runs' epochs; a stack's epoch trains all its seeds at
  once) and the peak memory of the compiled epoch (XLA's analysis, from
  `compiled.json` of the run).
- sparsity.md / sparsity.png: test users in three groups of equal size by
  their number of training interactions (paper Fig. 6); Recall@20 per group
  and model.
- ablation.md / ablation.png (with --ablation): MENTOR's variants (Table
  2's _f, _g, _fg rows) and Fig. 3 (base, L1, L2, full).
- sensitivity.md / sensitivity_*.png (with MENTOR): Figs. 5 and 7 from its
  search, for the keys it varied (sensitivity.py).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import plots
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import sensitivity
from mentor_jax import stats
from mentor_jax import workdir as workdir_lib

METRICS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')
HEADS = ('R@10', 'R@20', 'N@10', 'N@20')
ALPHA = 0.05
SPARSITY_METRIC = 'recall@20'


def final_dir(workdir: pathlib.Path, model: str) -> pathlib.Path:
  return workdir / model / 'final'


def test_values(workdir: pathlib.Path, model: str) -> dict[str, list[float]]:
  """{metric: [test value of each seed's run at its best epoch]}."""
  return values_of(final_dir(workdir, model))


def values_of(folder: pathlib.Path) -> dict[str, list[float]]:
  """`test_values` of the runs in `folder` (a single run or a stack)."""
  result = rundirs.read_result(folder)
  runs = result['runs'] if 'runs' in result else [result]
  return {m: [float(r['test'][m]) for r in runs] for m in METRICS}


def significance(workdir: pathlib.Path, models: list[str], reference: str
                 ) -> dict[tuple[str, str], float]:
  """{(model, metric): Holm-adjusted p of reference vs model} (paired over
  test users, each side's runs averaged per user)."""
  ref = stats.load_per_user(final_dir(workdir, reference))
  keys, ps = [], []
  for model in models:
    if model == reference:
      continue
    other = stats.load_per_user(final_dir(workdir, model))
    for metric in METRICS:
      keys.append((model, metric))
      ps.append(stats.paired_users(ref, other, metric)['p'])
  return dict(zip(keys, stats.holm(ps).tolist()))


def table2(workdir: pathlib.Path, models: list[str],
           reference: str | None) -> dict[str, Any]:
  """The rows of Table 2 and the reference's improvement (module doc)."""
  if len(models) < 2:
    reference = None
  values = {m: test_values(workdir, m) for m in models}
  summary = {m: {k: stats.summarize(v) for k, v in values[m].items()}
             for m in models}
  adjusted = significance(workdir, models, reference) if reference else {}
  rank = {}
  for metric in METRICS:
    order = sorted(models, key=lambda m: -summary[m][metric]['mean'])
    rank[metric] = {m: i for i, m in enumerate(order)}
  improvement = {}
  if reference:
    for metric in METRICS:
      best = max((m for m in models if m != reference),
                 key=lambda m: summary[m][metric]['mean'])
      ref_mean = summary[reference][metric]['mean']
      base = summary[best][metric]['mean']
      improvement[metric] = {
          'over': best, 'percent': 100 * (ref_mean - base) / base
          if base else math.nan,
          'significant': adjusted[(best, metric)] < ALPHA}
  return {'models': models, 'reference': reference, 'summary': summary,
          'rank': rank, 'holm_p': {f'{m}|{k}': p for (m, k), p
                                   in adjusted.items()},
          'improvement': improvement, 'alpha': ALPHA}


def _cell(t2: dict[str, Any], model: str, metric: str, tex: bool) -> str:
  s = t2['summary'][model][metric]
  half = (s['ci95'][1] - s['mean']) if s['n'] > 1 else math.nan
  text = f'{s["mean"]:.4f}' + ('' if math.isnan(half) else
                                (' $\\pm$ ' if tex else ' ± ') + f'{half:.4f}')
  p = t2['holm_p'].get(f'{model}|{metric}')
  if p is not None and p < t2['alpha']:
    text += '*'
  place = t2['rank'][metric][model]
  if place == 0:
    return f'\\textbf{{{text}}}' if tex else f'**{text}**'
  if place == 1:
    return f'\\underline{{{text}}}' if tex else f'<u>{text}</u>'
  return text


def _improvement_cells(t2: dict[str, Any]) -> list[str]:
  out = []
  for metric in METRICS:
    imp = t2['improvement'][metric]
    out.append(f'{imp["percent"]:+.2f}%' + ('*' if imp['significant']
                                             else ''))
  return out


def table2_markdown(t2: dict[str, Any]) -> str:
  lines = ['| model | ' + ' | '.join(HEADS) + ' |',
           '|---' * (len(HEADS) + 1) + '|']
  for m in t2['models']:
    lines.append(f'| {registry.get(m).title} | ' + ' | '.join(
        _cell(t2, m, k, tex=False) for k in METRICS) + ' |')
  if t2['reference']:
    lines.append('| improvement | ' + ' | '.join(_improvement_cells(t2))
                 + ' |')
  n = max(s['n'] for per in t2['summary'].values() for s in per.values())
  notes = [f'Test metrics at each run\'s best validation epoch: mean ± '
           f'half-width of the 95 % t interval over {n} seeds. Bold: best; '
           'underlined: second.']
  if t2['reference']:
    title = registry.get(t2['reference']).title
    notes.append(f'`*`: {title} against that model, paired t-test over test '
                 f'users, p < {t2["alpha"]} after Holm\'s correction over '
                 f'{len(t2["holm_p"])} comparisons. Improvement: {title} '
                 'over the best other model of each column.')
  return '\n'.join(lines) + '\n\n' + '\n'.join(notes) + '\n'


def table2_latex(t2: dict[str, Any]) -> str:
  lines = ['\\begin{tabular}{l' + 'c' * len(HEADS) + '}', '\\toprule',
           'Model & ' + ' & '.join(HEADS) + ' \\\\', '\\midrule']
  for m in t2['models']:
    lines.append(registry.get(m).title.replace('_', '\\_') + ' & ' +
                 ' & '.join(_cell(t2, m, k, tex=True) for k in METRICS)
                 + ' \\\\')
  if t2['reference']:
    cells = [c.replace('%', '\\%') for c in _improvement_cells(t2)]
    lines += ['\\midrule', 'Improvement & ' + ' & '.join(cells) + ' \\\\']
  lines += ['\\bottomrule', '\\end{tabular}']
  return '\n'.join(lines) + '\n'


def table3(workdir: pathlib.Path, models: list[str]) -> list[dict[str, Any]]:
  rows = []
  for model in models:
    final = final_dir(workdir, model)
    records = rundirs.read_metrics(rundirs.run_dirs(final)[0])
    compiled = final / 'compiled.json'
    peak = (json.loads(compiled.read_text()).get('peak_bytes')
            if compiled.exists() else None)
    rows.append({
        'model': model,
        'runs': records[0].get('stack_runs', 1) if records else 0,
        's_per_epoch': float(np.median([r['train_time_s'] for r in records])),
        'eval_s': float(np.median([r['eval_time_s'] for r in records])),
        'peak_gib': None if peak is None else peak / 2**30})
  return rows


def table3_text(rows: list[dict[str, Any]], tex: bool) -> str:
  heads = ('Model', 'runs at once', 's/epoch', 'eval s', 'peak memory')
  if tex:
    lines = ['\\begin{tabular}{lrrrr}', '\\toprule',
             ' & '.join(heads) + ' \\\\', '\\midrule']
  else:
    lines = ['| ' + ' | '.join(heads) + ' |', '|---' * len(heads) + '|']
  for r in rows:
    peak = ('?' if r['peak_gib'] is None else f'{r["peak_gib"]:.2f} GiB'
            if r['peak_gib'] >= 1 else f'{r["peak_gib"] * 1024:.1f} MiB')
    cells = [registry.get(r['model']).title, str(r['runs']),
             f'{r["s_per_epoch"]:.3g}', f'{r["eval_s"]:.3g}', peak]
    lines.append(' & '.join(cells) + ' \\\\' if tex
                 else '| ' + ' | '.join(cells) + ' |')
  if tex:
    lines += ['\\bottomrule', '\\end{tabular}']
  return '\n'.join(lines) + '\n'


def sparsity(workdir: pathlib.Path, models: list[str]) -> dict[str, Any]:
  """Recall@20 per model in three user groups by training interactions."""
  config = json.loads((final_dir(workdir, models[0]) / 'config.json')
                      .read_text())
  dataset = data_lib.load_dataset(
      datasets.resolve_data_path(config['data_npz']))
  counts = np.diff(dataset.split('train')[0])
  per_model = {m: stats.load_per_user(final_dir(workdir, m)) for m in models}
  users = per_model[models[0]]['users']
  # Three groups of (nearly) equal size by training count, stable by id.
  order = users[np.argsort(counts[users], kind='stable')]
  groups = np.array_split(order, 3)
  out = {'groups': [{'users': int(g.size), 'train_interactions':
                     [int(counts[g].min()), int(counts[g].max())]}
                    for g in groups], 'metric': SPARSITY_METRIC, 'models': {}}
  for m, per_user in per_model.items():
    index = {u: i for i, u in enumerate(per_user['users'].tolist())}
    values = per_user[SPARSITY_METRIC]
    out['models'][m] = [float(np.mean([values[index[u]] for u in g.tolist()]))
                        for g in groups]
  return out


def sparsity_markdown(sp: dict[str, Any]) -> str:
  heads = [f'{g["train_interactions"][0]}-{g["train_interactions"][1]} '
           f'({g["users"]} users)' for g in sp['groups']]
  lines = ['| model | ' + ' | '.join(heads) + ' |',
           '|---' * (len(heads) + 1) + '|']
  for m, values in sp['models'].items():
    lines.append(f'| {registry.get(m).title} | '
                 + ' | '.join(f'{v:.4f}' for v in values) + ' |')
  return ('Test Recall@20 by the number of training interactions of the '
          'user (three groups of equal size).\n\n' + '\n'.join(lines) + '\n')


def sparsity_png(sp: dict[str, Any], path: pathlib.Path) -> bool:
  """Grouped bars; False (nothing written) without matplotlib."""
  plt = plots.pyplot()
  if plt is None:
    return False
  models = list(sp['models'])
  width = 0.8 / len(models)
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for j, m in enumerate(models):
    ax.bar(np.arange(3) + j * width, sp['models'][m], width,
           label=registry.get(m).title)
  ax.set_xticks(np.arange(3) + 0.4 - width / 2)
  ax.set_xticklabels([f'{g["train_interactions"][0]}-'
                      f'{g["train_interactions"][1]}' for g in sp['groups']])
  ax.set_xlabel('training interactions of the test user')
  ax.set_ylabel('Recall@20')
  ax.legend(fontsize='small', ncol=2)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  return True


ABLATION_TITLES = {'mentor': 'MENTOR', 'mentor_f': 'MENTOR_f',
                   'mentor_g': 'MENTOR_g', 'mentor_fg': 'MENTOR_fg',
                   'mentor_base': 'base', 'mentor_l1': 'L1',
                   'mentor_l2': 'L2'}
FIG3 = ('mentor_base', 'mentor_l1', 'mentor_l2', 'mentor')


def ablation(workdir: pathlib.Path, variants: tuple[str, ...]
             ) -> dict[str, dict[str, Any]]:
  """{variant: {metric: summarize(seeds)}}, the full model as 'mentor'."""
  folders = {'mentor': final_dir(workdir, 'mentor')}
  folders.update({v: workdir / 'mentor' / 'ablation' / v for v in variants})
  return {v: {m: stats.summarize(x) for m, x in values_of(f).items()}
          for v, f in folders.items()}


def ablation_markdown(ab: dict[str, dict[str, Any]]) -> str:
  lines = ['| variant | ' + ' | '.join(HEADS) + ' |',
           '|---' * (len(HEADS) + 1) + '|']
  for v, per in ab.items():
    cells = []
    for m in METRICS:
      s = per[m]
      half = '' if s['n'] < 2 else f' ± {s["ci95"][1] - s["mean"]:.4f}'
      cells.append(f'{s["mean"]:.4f}{half}')
    lines.append(f'| {ABLATION_TITLES[v]} | ' + ' | '.join(cells) + ' |')
  return ('MENTOR\'s variants with its selected setting (configs/ablation.py:'
          ' _f no feature masking, _g no graph perturbation, base no '
          'alignment, L1 / L2 alignment levels up to 1 / 2; Fig. 3 is base, '
          'L1, L2, MENTOR). Test metrics, mean ± 95 % half-width over the '
          'seeds.\n\n' + '\n'.join(lines) + '\n')


def ablation_png(ab: dict[str, dict[str, Any]], path: pathlib.Path) -> bool:
  """Fig. 3: Recall@20 and NDCG@20 of base, L1, L2 and the full model."""
  plt = plots.pyplot()
  if plt is None:
    return False
  shown = [v for v in FIG3 if v in ab]
  fig, axes = plt.subplots(1, 2, figsize=(7, 3))
  for ax, metric in zip(axes, ('recall@20', 'ndcg@20')):
    means = [ab[v][metric]['mean'] for v in shown]
    halves = [ab[v][metric]['ci95'][1] - ab[v][metric]['mean']
              if ab[v][metric]['n'] > 1 else 0 for v in shown]
    ax.bar([ABLATION_TITLES[v] for v in shown], means, yerr=halves,
           color='tab:blue', capsize=3)
    ax.set_ylim(min(means) * 0.9, max(m + h for m, h in zip(means, halves))
                * 1.02)
    ax.set_title(metric)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  return True


def write_all(workdir: pathlib.Path, results: dict[str, Any],
              reference: str | None,
              variants: tuple[str, ...] = ()) -> dict[str, str]:
  """Writes every table and figure; returns {name: path}."""
  models = list(results)
  out_dir = workdir / 'tables'
  out_dir.mkdir(parents=True, exist_ok=True)
  t2 = table2(workdir, models, reference)
  t3 = table3(workdir, models)
  sp = sparsity(workdir, models)
  files = {'table2.md': table2_markdown(t2), 'table2.tex': table2_latex(t2),
           'table3.md': table3_text(t3, tex=False),
           'table3.tex': table3_text(t3, tex=True),
           'sparsity.md': sparsity_markdown(sp),
           'tables.json': json.dumps({'table2': t2, 'table3': t3,
                                      'sparsity': sp, 'selection': {
                                          m: {k: r[k] for k in (
                                              'selected', 'selected_by_test')}
                                          for m, r in results.items()}},
                                     indent=2, default=str) + '\n'}
  if variants:
    ab = ablation(workdir, variants)
    files['ablation.md'] = ablation_markdown(ab)
  figures = []
  if 'mentor' in results:
    figures = sensitivity.sensitivity(results['mentor']['search'],
                                      results['mentor']['valid_metric'])
    files['sensitivity.md'] = sensitivity.markdown(figures)
  written = {}
  for name, text in files.items():
    workdir_lib.write_text_atomic(out_dir / name, text)
    written[name] = str(out_dir / name)
  for path in sensitivity.write_pngs(figures, out_dir):
    written[path.name] = str(path)
  if sparsity_png(sp, out_dir / 'sparsity.png'):
    written['sparsity.png'] = str(out_dir / 'sparsity.png')
  if variants and ablation_png(ab, out_dir / 'ablation.png'):
    written['ablation.png'] = str(out_dir / 'ablation.png')
  return written

"""mentor-study on the tiny data: search, selection, seeds, tables; resume.

Two cheap models (MF-BPR, LightGCN), 2 seeds, a random search of 2 cells
each, 2 epochs: the study end to end, the same study stopped after its
third training and run again (identical tables), the plan check, and the
tables against what the runs hold.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest

from mentor_jax import errors
from mentor_jax.configs import ablation
from mentor_jax import registry
from mentor_jax import rundirs
from mentor_jax import stats
from mentor_jax import study
from mentor_jax import study_tables
from mentor_jax import train

MODELS = 'mfbpr,lightgcn'


def _args(workdir, **kw):
  argv = ['--config', 'tiny', '--models', MODELS, '--seeds', '0,1',
          '--search', 'random', '--cells', '2', '--workdir', str(workdir),
          '--config.epochs=2']
  for key, value in kw.items():
    argv += [f'--{key}', value]
  return argv


def _plan(data_root, models=MODELS, ablation=False, **kw):
  overrides = {'epochs': 2, 'data_npz': str(data_root / 'data' / 'tiny.npz')}
  ns = type('Args', (), dict(dict(config='tiny', models=models, seeds='0,1',
                                  search='random', cells=2, rung_epochs=10,
                                  paper_grid=False,
                                  ablation=ablation), **kw))
  return study.make_plan(ns, overrides)


@pytest.fixture(scope='module')
def finished(tiny_dataset, tmp_path_factory):
  root = tmp_path_factory.mktemp('study_root')
  (root / 'data').mkdir()
  shutil.copy(tiny_dataset, root / 'data' / 'tiny.npz')
  workdir = root / 'straight'
  plan = _plan(root)
  result = study.run_study(plan, workdir, reference='lightgcn')
  return root, workdir, plan, result


def test_search_selects_on_validation_and_trains_every_seed(finished):
  _, workdir, plan, result = finished
  for model in ('mfbpr', 'lightgcn'):
    searched = plan.searched[model]
    assert len(searched) == 2
    rows = result['models'][model]['search']
    metric = result['models'][model]['valid_metric']
    best = max(rows, key=lambda r: r['valid'][metric])
    assert result['models'][model]['selected'] == best['cell']
    by_test = max(rows, key=lambda r: r['test'][metric])
    assert result['models'][model]['selected_by_test'] == by_test['cell']
    final = rundirs.read_result(workdir / model / 'final')
    assert [r['seed'] for r in final['runs']] == [0, 1]
    config = json.loads((workdir / model / 'final' / 'config.json')
                        .read_text())
    for key, value in best['cell'].items():
      assert config[key] == value
  # The sample is fixed by the model's name: the same plan again.
  again = _plan(finished[0])
  assert again.searched == plan.searched


def test_table2_is_what_the_runs_hold(finished):
  _, workdir, _, _ = finished
  tables = json.loads((workdir / 'tables' / 'tables.json').read_text())
  t2 = tables['table2']
  for model in ('mfbpr', 'lightgcn'):
    final = rundirs.read_result(workdir / model / 'final')
    values = [r['test']['recall@20'] for r in final['runs']]
    s = t2['summary'][model]['recall@20']
    assert s['mean'] == pytest.approx(np.mean(values), abs=1e-15)
    assert s['ci95'] == pytest.approx(stats.summarize(values)['ci95'])
  # The paired test of the reference against MF-BPR, Holm over 4 metrics.
  ref = stats.load_per_user(workdir / 'lightgcn' / 'final')
  other = stats.load_per_user(workdir / 'mfbpr' / 'final')
  ps = [stats.paired_users(ref, other, m)['p']
        for m in study_tables.METRICS]
  want = stats.holm(ps)
  got = [t2['holm_p'][f'mfbpr|{m}'] for m in study_tables.METRICS]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  md = (workdir / 'tables' / 'table2.md').read_text()
  assert '| LightGCN |' in md and '| improvement |' in md
  best = max(('mfbpr', 'lightgcn'),
             key=lambda m: t2['summary'][m]['recall@20']['mean'])
  row = next(l for l in md.splitlines()
             if l.startswith(f'| {"MF-BPR" if best == "mfbpr" else "LightGCN"} |'))
  assert row.split('|')[3].strip().startswith('**')
  tex = (workdir / 'tables' / 'table2.tex').read_text()
  assert '\\textbf{' in tex and '\\underline{' in tex


def test_sparsity_groups_cover_the_test_users(finished):
  _, workdir, _, _ = finished
  sp = json.loads((workdir / 'tables' / 'tables.json').read_text())[
      'sparsity']
  per_user = stats.load_per_user(workdir / 'mfbpr' / 'final')
  assert sum(g['users'] for g in sp['groups']) == per_user['users'].size
  lows = [g['train_interactions'] for g in sp['groups']]
  assert lows[0][1] <= lows[1][0] and lows[1][1] <= lows[2][0]
  # The groups' means, weighted by size, give back the overall mean.
  sizes = np.array([g['users'] for g in sp['groups']])
  overall = (np.array(sp['models']['mfbpr']) * sizes).sum() / sizes.sum()
  assert overall == pytest.approx(per_user['recall@20'].mean(), abs=1e-12)
  t3 = (workdir / 'tables' / 'table3.md').read_text()
  # The compiled epoch's peak memory was recorded for every model.
  assert t3.count('MiB |') + t3.count('GiB |') == 2


def test_stopped_study_resumes_to_the_same_tables(finished):
  root, straight, plan, _ = finished
  workdir = root / 'stopped'
  calls = []

  def stop_at_third(config, path):
    calls.append(path)
    if len(calls) == 3:
      return {'interrupted': 'SIGTERM'}
    return train.train_and_evaluate(config, path)

  out = study.run_study(plan, workdir, train_fn=stop_at_third,
                        reference='lightgcn')
  assert out == {'interrupted': 'SIGTERM', 'model': 'mfbpr'}
  assert not (workdir / 'tables').exists()
  study.run_study(plan, workdir, reference='lightgcn')
  for name in ('table2.md', 'table2.tex', 'sparsity.md'):
    assert ((workdir / 'tables' / name).read_text()
            == (straight / 'tables' / name).read_text()), name


def test_halving_study_selects_among_its_cells(finished):
  # 3 cells, 2 epochs, a rung after 1: the worst cell is frozen there
  # (tests/test_halving.py checks the decisions against the runs' logs).
  root = finished[0]
  plan = _plan(root, models='lightgcn', search='halving', cells=3,
               rung_epochs=1)
  result = study.run_study(plan, root / 'halving')
  model = result['models']['lightgcn']
  rows = model['search']
  assert [r['cell'] for r in rows] == plan.searched['lightgcn']
  assert sorted(r['frozen_after'] is None for r in rows) == [
      False, True, True]
  frozen = next(r for r in rows if r['frozen_after'] == 1)
  assert frozen['epochs_run'] == 1
  metric = model['valid_metric']
  assert model['selected'] == max(rows, key=lambda r: r['valid'][metric])[
      'cell']
  final = rundirs.read_result(root / 'halving' / 'lightgcn' / 'final')
  assert [r['seed'] for r in final['runs']] == [0, 1]


@pytest.mark.slow  # every model, three trainings each: several minutes
@pytest.mark.parametrize('search', ['random', 'halving'])
def test_every_model_through_the_study(finished, search):
  # The study on the tiny data: all models, 2 seeds, 2 cells; with
  # halving, each model's grid goes through sample_groups (gated keys,
  # settings that change shapes).
  root = finished[0]
  models = ','.join(registry.names())
  plan = _plan(root, models=models, search=search, rung_epochs=1)
  result = study.run_study(plan, root / f'every_{search}')
  for model in registry.names():
    final = rundirs.read_result(root / f'every_{search}' / model / 'final')
    assert [r['seed'] for r in final['runs']] == [0, 1], model
    rows = result['models'][model]['search']
    searched = plan.searched[model]  # one cell: nothing to search
    assert len(rows) == (len(searched) if len(searched) > 1 else 0), model
  md = (root / f'every_{search}' / 'tables' / 'table2.md').read_text()
  for model in registry.names():
    assert f'| {registry.get(model).title} |' in md, model


def test_a_changed_plan_is_refused(finished, tmp_path):
  root, _, plan, _ = finished
  study.check_plan(tmp_path, plan)
  other = study.Plan(**{**plan.__dict__, 'seeds': [0, 1, 2]})
  with pytest.raises(errors.ConfigError, match='other settings.*seeds'):
    study.check_plan(tmp_path, other)
  # A plan written before --ablation existed resumes (the field's default).
  stored = json.loads((tmp_path / 'study.json').read_text())
  del stored['ablation']
  (tmp_path / 'study.json').write_text(json.dumps(stored))
  study.check_plan(tmp_path, plan)
  del root


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert study.main(_args(tmp_path, models='nope')) == 2
  assert 'unknown' in capsys.readouterr().err
  assert study.main(_args(tmp_path, seeds='0,0')) == 2
  assert study.main(_args(tmp_path) + ['--config.no_such_key=1']) == 2
  err = capsys.readouterr().err
  assert 'no_such_key' in err and 'Traceback' not in err
  with pytest.raises(SystemExit):
    study.main(_args(tmp_path, cells='0'))
  with pytest.raises(SystemExit):
    study.main(_args(tmp_path, **{'rung-epochs': '0'}))
  assert study.main(_args(tmp_path) + ['--paper-grid']) == 2
  assert 'add mentor' in capsys.readouterr().err


def test_paper_grid_samples_the_papers_grid_for_mentor_only(data_root):
  from mentor_jax.configs import paper  # pylint: disable=g-import-not-at-top
  plan = _plan(data_root, models='mentor,lightgcn', paper_grid=True,
               cells=5)
  cells = plan.searched['mentor']
  assert len(cells) == 5 and len({str(c) for c in cells}) == 5
  for cell in cells:
    assert set(cell) == set(paper.GRID)
    assert all(cell[k] in paper.GRID[k] for k in cell)
  assert set(plan.searched['lightgcn'][0]) == {'n_layers', 'reg_weight'}


@pytest.mark.slow  # MENTOR and its six variants: about a minute
def test_ablation_trains_mentors_variants_with_its_selected_cell(finished):
  root = finished[0]
  workdir = root / 'ablation'
  plan = _plan(root, models='mentor,mfbpr', ablation=True)
  result = study.run_study(plan, workdir)
  selected = result['models']['mentor']['selected']
  for variant in study.ABLATION_VARIANTS:
    folder = workdir / 'mentor' / 'ablation' / variant
    config = json.loads((folder / 'config.json').read_text())
    assert config['variant'] == variant
    # The selected cell, but for the switch the variant turns off (mentor_g
    # sets mask_weight_g, a key of MENTOR's grid, to 0).
    switches = ablation.VARIANTS[variant]
    for key, value in selected.items():
      assert config[key] == switches.get(key, value)
    assert len(rundirs.read_result(folder)['runs']) == 2
  config = json.loads((workdir / 'mentor' / 'ablation' / 'mentor_base' /
                       'config.json').read_text())
  assert config['align_levels'] == []
  # The official code's feature masking has no gradient: MENTOR_f trains
  # exactly as MENTOR (configs/ablation.py).
  assert (study_tables.values_of(workdir / 'mentor' / 'ablation' / 'mentor_f')
          == study_tables.test_values(workdir, 'mentor'))
  text = (workdir / 'tables' / 'ablation.md').read_text()
  for title in ('| MENTOR |', '| MENTOR_fg |', '| base |', '| L2 |'):
    assert title in text
  assert (workdir / 'tables' / 'ablation.png').exists()
  with pytest.raises(errors.ConfigError, match='add mentor'):
    _plan(root, models='mfbpr', ablation=True)


def test_estimate_measures_every_model(data_root, monkeypatch, capsys):
  monkeypatch.setenv('MENTOR_DATA_ROOT', str(data_root))
  assert study.main(['--config', 'tiny', '--models', MODELS, '--seeds', '0',
                     '--cells', '2', '--workdir', 'unused', '--estimate',
                     '--config.epochs=2']) == 0
  out = capsys.readouterr().out
  for title in ('mfbpr', 'lightgcn'):
    row = next(l for l in out.splitlines() if l.startswith(f'| {title} |'))
    cells = [c.strip() for c in row.split('|')[1:-1]]
    assert cells[1:3] == ['2', '1']  # 2 search runs, 1 seed
    assert cells[6] == '2 (2)'  # the --config.epochs limit
    assert float(cells[3]) > 0 and cells[5].endswith('GiB')
    # Hours: (2 + 1) runs x 2 epochs x s/epoch.
    assert float(cells[7]) == pytest.approx(3 * 2 * float(cells[3]) / 3600,
                                            rel=1e-2)
  assert not pathlib.Path('unused').exists()
  # Halving: 4 cells x 1 epoch, then 2 cells x 1 more (the rung-epochs is
  # 1, the limit 2), and 1 seed x 2: 8 run-epochs.
  assert study.main(['--config', 'tiny', '--models', 'lightgcn', '--seeds',
                     '0', '--cells', '4', '--search', 'halving',
                     '--rung-epochs', '1', '--workdir', 'unused',
                     '--estimate', '--config.epochs=2']) == 0
  row = next(l for l in capsys.readouterr().out.splitlines()
             if l.startswith('| lightgcn |'))
  cells = [c.strip() for c in row.split('|')[1:-1]]
  assert float(cells[7]) == pytest.approx(8 * float(cells[3]) / 3600,
                                          rel=1e-2)

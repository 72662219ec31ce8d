"""`python -m mentor_jax.report`: where it may write, the table, the PNG."""

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from configs import tiny
from mentor_jax import compare as compare_lib
from mentor_jax import report
from mentor_jax import stats
from mentor_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_dir(folder: pathlib.Path, n_epochs: int = 6, seed: int = 0):
  """A workdir as the trainer leaves it: config.json, metrics.jsonl."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True)
  config = tiny.get_config()
  (folder / 'config.json').write_text(config.to_json_best_effort())
  lines = []
  for epoch in range(n_epochs):
    m = {'recall@10': 0.1 + 0.02 * epoch + 0.01 * rng.random(),
         'recall@20': 0.2, 'ndcg@10': 0.05, 'ndcg@20': 0.07}
    lines.append(json.dumps({
        'epoch': epoch, 'step': 6 * (epoch + 1),
        'loss': {'bpr': 0.7 * 0.9**epoch, 'reg': 1e-3 + 1e-5 * epoch},
        'train_time_s': 0.1, 'eval_time_s': 0.02,
        'valid': m, 'test': dict(m, **{'recall@10': m['recall@10'] - 0.01}),
        'best_epoch': epoch}))
  (folder / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  return folder


def test_one_run_writes_into_its_workdir(tmp_path, capsys):
  run = _run_dir(tmp_path / 'run')
  assert report.main([str(run)]) == 0
  page = (run / 'report.md').read_text()
  assert page.startswith(workdir_lib.PAGE_MARKER)
  assert '| MENTOR | tiny |' in page and 'no result.json' in page
  assert (run / 'curves.png').exists()
  # Rerunning replaces what it wrote itself.
  assert report.main([str(run), '--title', 'Again']) == 0
  assert '# Again' in (run / 'report.md').read_text()
  capsys.readouterr()


def test_several_runs_need_a_named_table(tmp_path, capsys):
  a, b = _run_dir(tmp_path / 'a'), _run_dir(tmp_path / 'b', seed=1)
  with pytest.raises(SystemExit):
    report.main([str(a), str(b)])
  assert '--out' in capsys.readouterr().err
  out = tmp_path / 'out' / 'both.md'
  assert report.main([str(a), str(b), '--out', str(out)]) == 0
  assert (tmp_path / 'out' / 'both_curves.png').exists()
  assert not (a / 'report.md').exists()


def test_a_file_it_did_not_write_is_kept_unless_overwrite(tmp_path, capsys):
  run = _run_dir(tmp_path / 'run')
  mine = tmp_path / 'notes.md'
  mine.write_text('my notes\n')
  assert report.main([str(run), '--out', str(mine), '--no-png']) == 2
  assert mine.read_text() == 'my notes\n'
  assert 'exists' in capsys.readouterr().err
  assert report.main([str(run), '--out', str(mine), '--no-png',
                      '--overwrite']) == 0
  assert mine.read_text().startswith(workdir_lib.PAGE_MARKER)


@pytest.mark.skipif(shutil.which('git') is None, reason='git not installed')
def test_a_tracked_file_is_refused_even_with_overwrite(tmp_path, capsys):
  repo = tmp_path / 'repo'
  (repo / 'docs').mkdir(parents=True)
  tracked = repo / 'docs' / 'RESULTS.md'
  # Even a page the report wrote itself: git's copy is the user's.
  tracked.write_text(workdir_lib.PAGE_MARKER + '\n73 lines of results\n')
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@t']
  subprocess.run(git + ['init', '-q'], check=True)
  subprocess.run(git + ['add', 'docs/RESULTS.md'], check=True)
  subprocess.run(git + ['commit', '-q', '-m', 'results'], check=True)
  before = tracked.read_text()
  run = _run_dir(tmp_path / 'run')
  for extra in ([], ['--overwrite']):
    assert report.main([str(run), '--out', str(tracked), *extra]) == 2
    assert 'tracked by git' in capsys.readouterr().err
    assert tracked.read_text() == before
    assert not (repo / 'docs' / 'RESULTS_curves.png').exists()
  assert workdir_lib.git_tracked(tracked)
  assert not workdir_lib.git_tracked(repo / 'docs' / 'new.md')
  assert not workdir_lib.git_tracked(tmp_path / 'elsewhere' / 'x.md')


def test_the_learning_curves_png_decodes_and_is_drawn(tmp_path):
  image_lib = pytest.importorskip('matplotlib.image')
  a, b = _run_dir(tmp_path / 'a'), _run_dir(tmp_path / 'b', seed=1)
  png = tmp_path / 'curves.png'
  assert report.main([str(a), str(b), '--out', str(tmp_path / 't.md'),
                      '--png', str(png)]) == 0
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  pixels = image_lib.imread(png)[..., :3]  # float RGB in [0, 1]
  # 3 x 2 panels (valid, test, total, bpr, reg) at 100 dpi.
  assert pixels.shape == (640, 1260, 3)
  not_white = np.any(pixels < 0.9, axis=-1).mean()
  assert 0.02 < not_white < 0.5, not_white
  # Both runs' lines are drawn in their colours, C0 and C1.
  for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
    close = np.all(np.abs(pixels - np.array(rgb) / 255) < 0.05, axis=-1)
    assert close.sum() > 500, (rgb, close.sum())
  assert workdir_lib.written_by_report(png)


def test_records_without_loss_parts_still_plot(tmp_path, capsys):
  run = _run_dir(tmp_path / 'run')
  path = run / 'metrics.jsonl'
  records = [json.loads(l) for l in path.read_text().splitlines()]
  path.write_text(''.join(
      json.dumps({k: v for k, v in r.items() if k != 'loss'}) + '\n'
      for r in records))
  assert report.main([str(run)]) == 0
  assert (run / 'curves.png').stat().st_size > 0
  capsys.readouterr()


# Stacked workdirs (K runs as one program) and --compare.

USERS = np.arange(0, 120, 3, dtype=np.int64)  # 40 test users.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # Student-t table, 95%.


def _per_user(seed: int, shift: float) -> dict[str, np.ndarray]:
  """Per-user metrics: a user effect shared by all runs, run noise, shift."""
  base = np.random.default_rng(1234).random((len(report.METRICS),
                                             USERS.size))
  noise = np.random.default_rng(seed).normal(0, 0.02, base.shape)
  return {m: 0.3 * base[i] + shift + noise[i]
          for i, m in enumerate(report.METRICS)}


def _write_run(folder: pathlib.Path, *, seed: int, shift: float = 0.0,
               overrides=None, finished: bool = True, dataset=None):
  """A single-run workdir with per_user_test.npz; returns its result."""
  folder.mkdir(parents=True)
  config = json.loads(tiny.get_config().to_json_best_effort())
  config.update(overrides or {}, seed=seed)
  if dataset:
    config['dataset'] = dataset
  (folder / 'config.json').write_text(json.dumps(config))
  per_user = _per_user(seed, shift)
  test = {m: float(v.mean()) for m, v in per_user.items()}
  records = [{'epoch': e, 'train_time_s': 0.1, 'loss': {'bpr': 1 / (e + 1)},
              'valid': test, 'test': test} for e in range(3)]
  (folder / 'metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in records))
  result = {'best_epoch': 0, 'valid': test, 'test': test, 'epochs_run': 3}
  if finished:
    (folder / 'result.json').write_text(json.dumps(result))
  np.savez(folder / 'per_user_test.npz', users=USERS, **per_user)
  return result


def _stack_dir(folder: pathlib.Path, seeds=(0, 1, 2), grid=({},),
               shift: float = 0.0, finished: bool = True):
  """A stacked workdir: runs/<k>/ per (setting, seed), result.json on top."""
  folder.mkdir(parents=True)
  (folder / 'config.json').write_text(tiny.get_config().to_json_best_effort())
  runs = []
  for overrides in grid:
    for seed in seeds:
      k = len(runs)
      result = _write_run(folder / 'runs' / str(k), seed=seed, shift=shift,
                          overrides=overrides, finished=finished)
      runs.append(dict(result, run=k, seed=seed, overrides=overrides))
  if finished:
    (folder / 'result.json').write_text(json.dumps({
        'runs': runs, 'summary': stats.summary_of_runs(runs),
        'epochs_run': 3}))
  return folder, runs


def test_a_stacked_workdir_is_one_row_of_mean_std_and_interval(tmp_path,
                                                               capsys):
  wd, runs = _stack_dir(tmp_path / 'stack')
  assert report.main([str(wd), '--no-png']) == 0
  page = (wd / 'report.md').read_text()
  rows = [l for l in page.splitlines() if l.startswith('| MENTOR | tiny |')]
  assert len(rows) == 2, page  # The table and the intervals.
  cells = [c.strip() for c in rows[0].split('|')[1:-1]]
  intervals = [c.strip() for c in rows[1].split('|')[1:-1]]
  assert intervals[3] == '3' and intervals[4] == '0–2'  # n, seeds
  for i, metric in enumerate(report.METRICS):
    values = [r['test'][metric] for r in runs]
    mean = sum(values) / 3
    std = (sum((v - mean)**2 for v in values) / 2)**0.5
    assert cells[3 + i] == f'{mean:.4f} ± {std:.4f}'
    low, high = map(float, intervals[5 + i].strip('[]').split(','))
    half = T975[2] * std / 3**0.5
    assert low == pytest.approx(mean - half, abs=2e-4)
    assert high == pytest.approx(mean + half, abs=2e-4)
  assert cells[-4:-1] == ['0 / 3', 'budget (3 epochs)', '0.10']
  assert '(3 runs)' in cells[-1]
  capsys.readouterr()


def test_a_grid_stack_has_a_row_per_setting_and_curves(tmp_path, capsys):
  grid = ({'temp': 0.2}, {'temp': 0.6})
  wd, _ = _stack_dir(tmp_path / 'grid', seeds=(3, 7), grid=grid)
  assert report.main([str(wd)]) == 0
  page = (wd / 'report.md').read_text()
  rows = [l for l in page.splitlines() if l.startswith('| MENTOR | tiny |')]
  assert len(rows) == 4, page  # 2 settings, in both tables.
  assert sum('temp=0.2' in r for r in rows) == 2
  assert sum('temp=0.6' in r for r in rows) == 2
  assert sum('| 2 | 3, 7 |' in r for r in rows) == 2
  assert (wd / 'curves.png').stat().st_size > 0
  # Still training: no result.json anywhere; the settings come from the
  # runs' configs and the rows say the runs are unfinished.
  wd, _ = _stack_dir(tmp_path / 'open', seeds=(0, 1), grid=grid,
                     finished=False)
  assert report.main([str(wd), '--no-png']) == 0
  page = (wd / 'report.md').read_text()
  assert page.count('no result.json (interrupted) in 2 of 2 runs') == 2
  assert 'temp=0.2' in page and 'temp=0.6' in page
  capsys.readouterr()


def _table(out: str) -> dict[str, list[str]]:
  """--compare's table: metric -> its cells."""
  rows = {}
  for line in out.splitlines():
    cells = [c.strip() for c in line.split('|')[1:-1]]
    if cells and cells[0] in report.METRICS:
      rows[cells[0]] = cells[1:]
  return rows


def test_compare_two_stacks(tmp_path, capsys):
  a, runs_a = _stack_dir(tmp_path / 'a')
  b, runs_b = _stack_dir(tmp_path / 'b', seeds=(10, 11, 12), shift=0.05)
  assert report.main(['--compare', str(a), str(b)]) == 0
  out = capsys.readouterr().out
  rows = _table(out)
  assert set(rows) == set(report.METRICS)
  for metric, cells in rows.items():
    mean_a = sum(r['test'][metric] for r in runs_a) / 3
    mean_b = sum(r['test'][metric] for r in runs_b) / 3
    assert cells[0].startswith(f'{mean_a:.4f} ± ')
    assert cells[1].startswith(f'{mean_b:.4f} ± ')
    assert cells[2] == f'{100 * (mean_b - mean_a) / mean_a:+.2f}%'
    assert all(c.endswith('*') for c in cells[3:]), cells  # Shifted by 0.05.
  assert '3 runs' in out and 'over the 40 test users' in out
  # A against itself: no difference, p = 1 everywhere, nothing marked.
  assert report.main(['--compare', str(a), str(a)]) == 0
  for cells in _table(capsys.readouterr().out).values():
    assert cells[2] == '+0.00%' and cells[3:] == ['1.0000'] * 3


def test_compare_single_runs_and_groups(tmp_path, capsys):
  a1, a2, b1, b2 = (tmp_path / n for n in ('a1', 'a2', 'b1', 'b2'))
  _write_run(a1, seed=0)
  _write_run(a2, seed=1)
  _write_run(b1, seed=2, shift=0.05)
  _write_run(b2, seed=3, shift=0.05)
  assert report.main(['--compare', str(a1), str(b1)]) == 0
  out = capsys.readouterr().out
  rows = _table(out)
  assert all(cells[3] == 'n/a' for cells in rows.values())
  assert 'needs at least 2 runs on each side; A has 1, B has 1' in out
  assert all(cells[4].endswith('*') for cells in rows.values())
  # Groups: the runs of a1, a2 are pooled (2 runs a side: Welch runs).
  assert report.main(['--compare', f'{a1},{a2}', f'{b1},{b2}']) == 0
  out = capsys.readouterr().out
  assert 'mean A (2 runs)' in out and 'n/a' not in out
  # A stack and a single run pool too.
  s, _ = _stack_dir(tmp_path / 's')
  assert report.main(['--compare', f'{s},{a1}', str(b1)]) == 0
  out = capsys.readouterr().out
  assert 'mean A (4 runs)' in out and 'different settings' not in out
  # Pooling a sweep's cells is allowed, and said.
  g, _ = _stack_dir(tmp_path / 'g', seeds=(0, 1),
                    grid=({'temp': 0.2}, {'temp': 0.6}))
  assert report.main(['--compare', str(g), str(b1)]) == 0
  out = capsys.readouterr().out
  assert ('side A pools runs with different settings ({"temp": 0.2}; '
          '{"temp": 0.6})') in out
  # Users on one side only are left out of the paired test, and said.
  per_user = {m: v[:30] for m, v in _per_user(2, 0.05).items()}
  np.savez(b1 / 'per_user_test.npz', users=USERS[:30], **per_user)
  assert report.main(['--compare', str(a1), str(b1)]) == 0
  out = capsys.readouterr().out
  assert 'over the 30 test users' in out
  assert 'Left out: 10 users only in A' in out


def test_compare_refuses_bad_input_naming_the_file(tmp_path, capsys):
  a, _ = _stack_dir(tmp_path / 'a')
  b, _ = _stack_dir(tmp_path / 'b', shift=0.05)
  gone = b / 'runs' / '1' / 'per_user_test.npz'
  gone.unlink()
  assert report.main(['--compare', str(a), str(b)]) == 1
  err = capsys.readouterr().err
  assert f'{gone} not found' in err and '--no-paired' in err
  assert 'Traceback' not in err
  assert report.main(['--compare', str(a), str(b), '--no-paired']) == 0
  assert 'not run (--no-paired)' in capsys.readouterr().out
  # Users that differ between runs of one side.
  np.savez(gone, users=USERS + 1, **_per_user(0, 0.0))
  assert report.main(['--compare', str(a), str(b)]) == 1
  err = capsys.readouterr().err
  assert 'not the same users' in err and str(gone) in err
  assert str(b / 'runs' / '0' / 'per_user_test.npz') in err
  # Another dataset.
  other = tmp_path / 'other'
  _write_run(other, seed=0, dataset='baby')
  assert report.main(['--compare', str(a), str(other), '--no-paired']) == 1
  assert 'different datasets (A: tiny; B: baby)' in capsys.readouterr().err
  # Another dataset of the same name: the digests in result.json differ.
  same_name = tmp_path / 'same_name'
  _write_run(same_name, seed=0)
  result = json.loads((same_name / 'result.json').read_text())
  (same_name / 'result.json').write_text(
      json.dumps(dict(result, data_sha256='f' * 64)))
  assert report.main(['--compare', str(a), str(same_name)]) == 0  # a: none
  capsys.readouterr()
  for run in (a / 'result.json', b / 'result.json'):
    result = json.loads(run.read_text())
    run.write_text(json.dumps(dict(result, data_sha256='e' * 64)))
  assert report.main(['--compare', str(a), str(b), '--no-paired']) == 0
  capsys.readouterr()
  assert report.main(['--compare', str(a), str(same_name)]) == 1
  err = capsys.readouterr().err
  assert 'same name but different content' in err
  assert str(same_name / 'result.json') in err and 'Traceback' not in err
  # Not finished.
  open_ = tmp_path / 'open'
  _write_run(open_, seed=0, finished=False)
  assert report.main(['--compare', str(a), str(open_)]) == 1
  assert f'{open_ / "result.json"} not found' in capsys.readouterr().err
  # A metric the result does not have.
  bare = tmp_path / 'bare'
  _write_run(bare, seed=0)
  (bare / 'result.json').write_text(json.dumps(
      {'best_epoch': 0, 'valid': {}, 'test': {'recall@10': 0.1},
       'epochs_run': 1}))
  assert report.main(['--compare', str(a), str(bare)]) == 1
  err = capsys.readouterr().err
  assert str(bare / 'result.json') in err and 'recall@20' in err
  with pytest.raises(SystemExit):
    report.main(['--compare', str(a), str(b), str(a)])
  capsys.readouterr()


def test_compare_out_is_written_only_where_allowed(tmp_path, capsys):
  a, _ = _stack_dir(tmp_path / 'a')
  b, _ = _stack_dir(tmp_path / 'b', shift=0.05)
  mine = tmp_path / 'mine.md'
  mine.write_text('keep me\n')
  assert report.main(['--compare', str(a), str(b), '--out', str(mine)]) == 2
  assert mine.read_text() == 'keep me\n'
  out = tmp_path / 'cmp.md'
  assert report.main(['--compare', str(a), str(b), '--out', str(out)]) == 0
  page = out.read_text()
  assert page.startswith(workdir_lib.PAGE_MARKER) and '| recall@20 |' in page
  assert report.main(['--compare', str(b), str(a), '--out', str(out)]) == 0
  assert not list(a.glob('*.md')) and not list(b.glob('*.md'))
  capsys.readouterr()


def test_p_cells_mark_p_below_005():
  fmt = compare_lib._fmt_p  # pylint: disable=protected-access
  assert [fmt(p) for p in (0.049, 0.05, 0.3, 1.0, 1e-7)] == [
      '0.0490*', '0.0500', '0.3000', '1.0000', '1.0e-07*']
  assert fmt(float('nan')) == 'n/a'

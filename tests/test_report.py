"""`python -m mentor_jax.report`: where it may write, the table, the PNG."""

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from configs import tiny
from mentor_jax import report

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
  assert page.startswith(report.MARKER)
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
  assert mine.read_text().startswith(report.MARKER)


@pytest.mark.skipif(shutil.which('git') is None, reason='git not installed')
def test_a_tracked_file_is_refused_even_with_overwrite(tmp_path, capsys):
  repo = tmp_path / 'repo'
  (repo / 'docs').mkdir(parents=True)
  tracked = repo / 'docs' / 'RESULTS.md'
  # Even a page the report wrote itself: git's copy is the user's.
  tracked.write_text(report.MARKER + '\n73 lines of results\n')
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
  assert report.git_tracked(tracked)
  assert not report.git_tracked(repo / 'docs' / 'new.md')
  assert not report.git_tracked(tmp_path / 'elsewhere' / 'x.md')


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
  assert report._written_here(png)  # pylint: disable=protected-access


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

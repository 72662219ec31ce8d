"""MENTOR's sensitivity figures (mentor_jax/sensitivity.py) from hand-made
search rows: which figures, which cell stands for each point, the marks."""

import pytest

from mentor_jax import sensitivity


def _row(temp, g, align, valid, test, frozen=None):
  return {'cell': {'temp': temp, 'mask_weight_g': g, 'align_weight': align},
          'valid': {'recall@20': valid},
          'test': {'recall@20': test, 'ndcg@20': test / 2},
          'frozen_after': frozen}


ROWS = [_row(0.2, 1e-4, 0.1, valid=0.30, test=0.10),
        _row(0.2, 1e-4, 0.2, valid=0.35, test=0.08),  # better valid
        _row(0.4, 1e-4, 0.1, valid=0.20, test=0.12, frozen=10),
        _row(0.4, 1e-3, 0.2, valid=0.25, test=0.11),
        {'cell': {'temp': 0.6, 'mask_weight_g': 1e-3, 'align_weight': 0.3},
         'valid': {}, 'test': {}, 'diverged': 'nan loss'}]


def test_figures_of_the_varied_keys_and_the_best_valid_cell_per_point():
  figures = {f['name']: f for f in sensitivity.sensitivity(ROWS, 'recall@20')}
  # dropout and mask_weight_f were not searched: no (p, lambda_f) figure.
  assert sorted(figures) == ['fig5', 'fig7_tau_lambda_g']
  fig7 = figures['fig7_tau_lambda_g']
  assert fig7['axes'] == [[0.2, 0.4], [1e-4, 1e-3]]  # the diverged cell out
  # Two cells at (0.2, 1e-4): the one better on validation stands for it.
  assert sensitivity._value(fig7, (0.2, 1e-4), 'recall@20') == (0.08, False)
  assert sensitivity._value(fig7, (0.4, 1e-4), 'recall@20') == (0.12, True)
  value, _ = sensitivity._value(fig7, (0.2, 1e-3), 'recall@20')
  assert value != value  # untried: nan
  fig5 = figures['fig5']
  assert fig5['axes'] == [[0.1, 0.2]]
  # align 0.1: (0.2, 1e-4) valid 0.30 beats (0.4, 1e-4) valid 0.20.
  assert sensitivity._value(fig5, (0.1,), 'ndcg@20') == (0.05, False)
  md = sensitivity.markdown(list(figures.values()))
  assert '| 0.2 | 0.0800 | - |' in md
  assert '| 0.4 | 0.1200+ | 0.1100 |' in md
  assert '| 0.1 | 0.1000 | 0.0500 |' in md


def test_no_figure_without_the_keys(tmp_path):
  rows = [_row(0.2, 1e-4, 0.1, 0.3, 0.1), _row(0.2, 1e-4, 0.1, 0.2, 0.1)]
  assert sensitivity.sensitivity(rows, 'recall@20') == []
  assert '--paper-grid' in sensitivity.markdown([])
  assert sensitivity.write_pngs([], tmp_path) == []


def test_pngs_are_written(tmp_path):
  pytest.importorskip('matplotlib')
  figures = sensitivity.sensitivity(ROWS, 'recall@20')
  paths = sensitivity.write_pngs(figures, tmp_path)
  assert sorted(p.name for p in paths) == [
      'sensitivity_fig5.png', 'sensitivity_fig7_tau_lambda_g.png']
  for path in paths:
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert not list(tmp_path.glob('.*'))  # no temporary file left

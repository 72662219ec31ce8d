"""mentor_jax.stats against hand-computed cases and formulas written out.

The reference t distribution here is the density integrated numerically
(Simpson's rule on the closed form with math.lgamma), its quantile found by
bisection: no scipy in the references, so the tests check stats.py's use of
scipy rather than scipy against itself.
"""

import json
import math

import numpy as np
import pytest

from mentor_jax import stats
from mentor_jax import errors
from mentor_jax import rundirs


def _t_cdf(x: float, df: float) -> float:
  """P(T <= x) for Student's t with `df` degrees of freedom (Simpson)."""
  log_c = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2)
           - 0.5 * math.log(df * math.pi))
  grid = np.linspace(0.0, abs(x), 20001)
  pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(grid**2 / df))
  h = grid[1] - grid[0]
  central = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum()
                     + 2 * pdf[2:-1:2].sum())
  return 0.5 + math.copysign(central, x)


def _t_quantile(q: float, df: float) -> float:
  low, high = 0.0, 100.0
  for _ in range(100):
    mid = (low + high) / 2
    low, high = (mid, high) if _t_cdf(mid, df) < q else (low, mid)
  return (low + high) / 2


def _two_sided_p(t: float, df: float) -> float:
  return 2 * (1 - _t_cdf(abs(t), df))


def test_the_reference_t_matches_printed_tables():
  # Student-t tables, two-sided 95%: df 1, 2, 4, 10, 30.
  for df, printed in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228),
                      (30, 2.042)):
    assert _t_quantile(0.975, df) == pytest.approx(printed, abs=1e-3)
  assert _t_cdf(0.0, 7) == 0.5


def test_summarize_a_hand_computed_case():
  s = stats.summarize([1, 2, 3, 4, 5])
  assert s['n'] == 5 and s['mean'] == 3.0
  assert s['std'] == pytest.approx(math.sqrt(2.5))  # sum sq dev 10 / 4
  # t(0.975, 4) = 2.776 from the table: 3 -+ 2.776 * sqrt(2.5) / sqrt(5).
  half = 2.776 * math.sqrt(0.5)
  assert s['ci95'] == pytest.approx([3 - half, 3 + half], abs=1e-3)
  json.dumps(s)  # Plain Python numbers.
  assert all(type(v) is float for v in [s['mean'], s['std'], *s['ci95']])


@pytest.mark.parametrize('n', [2, 3, 7, 20])
def test_summarize_interval_is_the_t_interval(n):
  x = np.random.default_rng(n).normal(0.1, 0.01, size=n)
  s = stats.summarize(list(x))
  mean = sum(x) / n
  std = math.sqrt(sum((v - mean)**2 for v in x) / (n - 1))
  half = _t_quantile(0.975, n - 1) * std / math.sqrt(n)
  assert s['mean'] == pytest.approx(mean, rel=1e-12)
  assert s['std'] == pytest.approx(std, rel=1e-12)
  assert s['ci95'] == pytest.approx([mean - half, mean + half], rel=1e-7)
  assert s['n'] == n


def test_summarize_one_value_and_none():
  s = stats.summarize([0.25])
  assert s['mean'] == 0.25 and s['std'] == 0.0 and s['n'] == 1
  assert all(math.isnan(v) for v in s['ci95'])
  assert json.loads(json.dumps(s))['n'] == 1  # NaN survives Python's json.
  with pytest.raises(ValueError, match='non-empty'):
    stats.summarize([])


def test_summary_of_runs_has_the_result_json_shape():
  runs = [{'run': k, 'seed': k, 'valid': {'recall@20': v, 'ndcg@20': v / 2},
           'test': {'recall@20': v + 0.01, 'ndcg@20': v / 2 + 0.01}}
          for k, v in enumerate([0.10, 0.12, 0.14])]
  summary = stats.summary_of_runs(runs)
  assert set(summary) == {'valid', 'test'}
  assert set(summary['test']) == {'recall@20', 'ndcg@20'}
  r = summary['test']['recall@20']
  assert r['n'] == 3
  assert r['mean'] == pytest.approx(0.13)
  assert r['std'] == pytest.approx(0.02)
  half = 4.303 * 0.02 / math.sqrt(3)  # t(0.975, 2) from the table.
  assert r['ci95'] == pytest.approx([0.13 - half, 0.13 + half], abs=1e-4)
  assert summary['valid']['ndcg@20']['mean'] == pytest.approx(0.06)


def test_summary_of_runs_refuses_runs_that_disagree_on_metrics():
  runs = [{'valid': {'a': 1.0}, 'test': {'a': 1.0}},
          {'valid': {'a': 1.0}, 'test': {'b': 1.0}}]
  with pytest.raises(ValueError, match='run 1 reports test metrics'):
    stats.summary_of_runs(runs)
  with pytest.raises(ValueError):
    stats.summary_of_runs([])


def test_welch_hand_computed():
  # a: mean 2, var 1; b: mean 5.5, var 29/3. se^2 = 1/3 + 29/12 = 2.75.
  w = stats.welch([1, 2, 3], [2, 4, 7, 9])
  assert w['mean_diff'] == -3.5
  assert w['t'] == pytest.approx(-3.5 / math.sqrt(2.75))
  # Welch-Satterthwaite: se^4 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1)).
  df = 2.75**2 / ((1 / 3)**2 / 2 + (29 / 12)**2 / 3)
  assert w['df'] == pytest.approx(df)
  assert w['p'] == pytest.approx(_two_sided_p(w['t'], df), abs=1e-8)
  assert 0.1 < w['p'] < 0.11
  assert (w['n_a'], w['n_b']) == (3, 4)


def test_welch_matches_the_formula_on_random_runs():
  rng = np.random.default_rng(0)
  a, b = rng.normal(0.10, 0.004, 5), rng.normal(0.105, 0.01, 8)
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  t = (a.mean() - b.mean()) / math.sqrt(va + vb)
  df = (va + vb)**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
  w = stats.welch(a, b)
  assert w['t'] == pytest.approx(t) and w['df'] == pytest.approx(df)
  assert w['p'] == pytest.approx(_two_sided_p(t, df), abs=1e-8)
  # Antisymmetric in its arguments.
  assert stats.welch(b, a)['t'] == pytest.approx(-t)


def test_welch_with_too_few_runs_or_no_spread():
  for a, b in (([0.1], [0.2, 0.3]), ([0.1, 0.2], [0.3]), ([], [1, 2])):
    w = stats.welch(a, b)
    assert math.isnan(w['t']) and math.isnan(w['p'])
  same = stats.welch([0.1, 0.1], [0.1, 0.1, 0.1])
  assert (same['t'], same['p']) == (0.0, 1.0)
  apart = stats.welch([0.1, 0.1], [0.2, 0.2])
  assert apart['p'] == 0.0 and apart['t'] == -math.inf


def _side(users, **metrics):
  return {'users': np.asarray(users, np.int64),
          **{k: np.asarray(v, np.float64) for k, v in metrics.items()}}


def test_holm_hand_computed():
  # m = 4, sorted p: .01, .02, .03, .04 -> 4*.01, 3*.02, 2*.03, 1*.04 =
  # .04, .06, .06, .04 -> running max .04, .06, .06, .06; given unsorted.
  got = stats.holm([0.03, 0.01, 0.04, 0.02])
  np.testing.assert_allclose(got, [0.06, 0.04, 0.06, 0.06], rtol=1e-15)
  # Capped at 1; a NaN stays NaN and does not count in m (m = 2 here).
  got = stats.holm([0.6, math.nan, 0.01])
  np.testing.assert_allclose(got[[0, 2]], [0.6, 0.02], rtol=1e-15)
  assert math.isnan(got[1])
  assert stats.holm([0.7, 0.9]).tolist() == [1.0, 1.0]
  assert stats.holm([]).size == 0


def test_holm_against_brute_force_definition():
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 0.2, size=9)
  order = sorted(range(9), key=lambda i: p[i])
  want = np.empty(9)
  for rank, i in enumerate(order):
    want[i] = max(min(1.0, (9 - j) * p[order[j]]) for j in range(rank + 1))
  np.testing.assert_allclose(stats.holm(p), want, rtol=1e-15)


def test_paired_identical_groups_give_p_one():
  x = np.random.default_rng(1).random(50)
  out = stats.paired_users(_side(range(50), m=x), _side(range(50), m=x), 'm')
  assert (out['t'], out['p'], out['wilcoxon_p']) == (0.0, 1.0, 1.0)
  assert out['n_users'] == 50 and out['mean_diff'] == 0.0


def test_paired_shifted_group_gives_a_tiny_p_and_the_t_formula():
  rng = np.random.default_rng(2)
  n = 400
  a = rng.random(n)
  b = a + 0.02 + rng.normal(0, 0.05, n)
  out = stats.paired_users(_side(range(n), m=b), _side(range(n), m=a), 'm')
  d = b - a
  t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
  assert out['t'] == pytest.approx(t)
  assert out['mean_diff'] == pytest.approx(d.mean())
  assert out['p'] < 1e-8 and out['wilcoxon_p'] < 1e-8
  # Small shift, moderate t: the p-value itself against the reference.
  c = a + 0.004 + rng.normal(0, 0.05, n)
  out = stats.paired_users(_side(range(n), m=c), _side(range(n), m=a), 'm')
  d = c - a
  t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
  assert out['p'] == pytest.approx(_two_sided_p(t, n - 1), abs=1e-8)


def test_paired_wilcoxon_exact_hand_cases():
  a = np.zeros(5)
  # All 5 differences positive: W- = 0; two-sided exact p = 2 / 2^5.
  out = stats.paired_users(_side(range(5), m=[1, 2, 3, 4, 5]),
                           _side(range(5), m=a), 'm')
  assert out['wilcoxon_p'] == pytest.approx(2 / 32)
  # d = 1, -2, 3, 4, 5: W- = 2; subsets of ranks summing <= 2: {}, {1}, {2}.
  out = stats.paired_users(_side(range(5), m=[1, -2, 3, 4, 5]),
                           _side(range(5), m=a), 'm')
  assert out['wilcoxon_p'] == pytest.approx(2 * 3 / 32)


def test_paired_uses_only_the_common_users():
  a = _side([0, 2, 4, 6], m=[0.5, 0.1, 0.2, 0.3])
  b = _side([1, 2, 4, 6, 8], m=[9.0, 0.0, 0.1, 0.1, 9.0])
  out = stats.paired_users(a, b, 'm')
  assert out['n_users'] == 3 and out['n_only_a'] == 1
  assert out['n_only_b'] == 2
  assert out['mean_diff'] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
  with pytest.raises(ValueError, match='no test user in common'):
    stats.paired_users(_side([0], m=[1.0]), _side([1], m=[1.0]), 'm')
  with pytest.raises(KeyError, match='ndcg@20'):
    stats.paired_users(a, b, 'ndcg@20')


def _write_per_user(folder, users, **metrics):
  folder.mkdir(parents=True, exist_ok=True)
  np.savez(folder / 'per_user_test.npz', users=np.asarray(users, np.int64),
           **{k: np.asarray(v, np.float64) for k, v in metrics.items()})


def _stack(workdir, n_runs):
  workdir.mkdir(parents=True)
  runs = [{'run': k, 'seed': k, 'overrides': {}, 'best_epoch': 0,
           'valid': {}, 'test': {}, 'epochs_run': 1} for k in range(n_runs)]
  (workdir / 'result.json').write_text(json.dumps({'runs': runs,
                                                   'epochs_run': 1}))
  return [workdir / 'runs' / str(k) for k in range(n_runs)]


def test_load_per_user_single_stack_and_group(tmp_path):
  single = tmp_path / 'single'
  _write_per_user(single, [1, 3], m=[0.2, 0.4])
  (single / 'result.json').write_text('{"best_epoch": 0}')
  got = stats.load_per_user(single)
  assert got['users'].dtype == np.int64
  np.testing.assert_array_equal(got['users'], [1, 3])
  np.testing.assert_allclose(got['m'], [0.2, 0.4])

  dirs = _stack(tmp_path / 'stack', 2)
  _write_per_user(dirs[0], [1, 3], m=[0.0, 1.0])
  _write_per_user(dirs[1], [1, 3], m=[1.0, 1.0])
  assert rundirs.run_dirs(tmp_path / 'stack') == dirs
  np.testing.assert_allclose(stats.load_per_user(tmp_path / 'stack')['m'],
                             [0.5, 1.0])
  # A group: every run counts once (3 runs: 0.2, 0.0, 1.0 -> 0.4).
  got = stats.load_per_user([single, tmp_path / 'stack'])
  np.testing.assert_allclose(got['m'], [0.4, 0.8])


def test_load_per_user_refuses_bad_files_naming_them(tmp_path):
  dirs = _stack(tmp_path / 'stack', 2)
  _write_per_user(dirs[0], [1, 3], m=[0.0, 1.0])
  dirs[1].mkdir(parents=True)
  missing = dirs[1] / 'per_user_test.npz'
  with pytest.raises(errors.ResultFileError, match=str(missing)):
    stats.load_per_user(tmp_path / 'stack')
  _write_per_user(dirs[1], [1, 4], m=[0.0, 1.0])
  with pytest.raises(errors.ResultFileError,
                     match='not the same users') as e:
    stats.load_per_user(tmp_path / 'stack')
  assert str(dirs[0]) in str(e.value) and str(dirs[1]) in str(e.value)
  _write_per_user(dirs[1], [1, 3], n=[0.0, 1.0])
  with pytest.raises(errors.ResultFileError, match='metrics'):
    stats.load_per_user(tmp_path / 'stack')
  _write_per_user(dirs[1], [3, 1], m=[0.0, 1.0])
  with pytest.raises(errors.ResultFileError, match='ascending'):
    stats.load_per_user(tmp_path / 'stack')
  _write_per_user(dirs[1], [1, 3], m=[0.0, 1.0, 2.0])
  with pytest.raises(errors.ResultFileError,
                     match=r'field m: expected 2 floats'):
    stats.load_per_user(tmp_path / 'stack')
  (dirs[1] / 'per_user_test.npz').write_text('not an npz')
  with pytest.raises(errors.ResultFileError, match='not a readable'):
    stats.load_per_user(tmp_path / 'stack')


def test_run_dirs_of_a_stack_still_training_and_a_bad_result(tmp_path):
  wd = tmp_path / 'wd'
  for k in (1, 0, 10):
    (wd / 'runs' / str(k)).mkdir(parents=True)
    (wd / 'runs' / str(k) / 'config.json').write_text('{}')
  assert rundirs.is_stack(wd)
  assert [d.name for d in rundirs.run_dirs(wd)] == ['0', '1', '10']
  (wd / 'result.json').write_text('{"runs": [{"run": 0}, {"run": 5}]}')
  with pytest.raises(errors.ResultFileError, match='lists run 5'):
    rundirs.run_dirs(wd)
  (wd / 'result.json').write_text('{"runs": ')
  with pytest.raises(errors.ResultFileError, match='not valid JSON'):
    rundirs.run_dirs(wd)
  assert rundirs.run_dirs(tmp_path) == [tmp_path]  # Not a stack.

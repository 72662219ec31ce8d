"""bench/reference/compare_curves.py on hand-made curves."""

import json

import numpy as np
import pytest

from bench.reference import compare_curves


def _ours(folder, curves):
  for k, (loss, valid) in enumerate(curves):
    run = folder / 'runs' / str(k)
    run.mkdir(parents=True)
    (run / 'config.json').write_text('{}')
    (run / 'metrics.jsonl').write_text(''.join(
        json.dumps({'epoch': e, 'loss': {'a': l / 2, 'b': l / 2},
                    'valid': {'recall@20': v}, 'test': {'recall@20': v}})
        + '\n'
        for e, (l, v) in enumerate(zip(loss, valid))))
  return folder


def _mmrec(path, loss, valid, n_batches=30):
  per_epoch = [{'epoch': e, 'loss': l * n_batches,
                'valid': {'recall@20': v}, 'test': {'recall@20': v}}
               for e, (l, v) in
               enumerate(zip(loss, valid))]
  path.write_text('epoch 0: ...\nBENCH_RESULT ' + json.dumps(
      {'batches_per_epoch': n_batches, 'metrics_per_epoch': per_epoch}))
  return path


def test_loss_gap_tail_means_and_welch(tmp_path):
  epochs = np.arange(50)
  base = 1.0 / (1 + epochs)
  ours = _ours(tmp_path / 'ours', [
      (base * 1.01, 0.10 + 0.001 * s + 0 * epochs) for s in range(3)])
  logs = [_mmrec(tmp_path / f'm{s}.log', base * (1 + 0.02 * (s - 1)),
                 0.20 + 0.001 * s + 0 * epochs) for s in range(3)]
  out = compare_curves.compare(compare_curves.ours_curves([ours]),
                               compare_curves.mmrec_curves(logs),
                               from_epoch=10, last=40)
  assert out['epochs'] == 50 and out['last'] == 40
  # MMRec's mean is `base` (its seeds at -2%, 0, +2%): ours is 1% above.
  assert out['loss_rel_diff_max'] == pytest.approx(0.01)
  assert out['mmrec_loss_seed_spread_median'] == pytest.approx(0.04)
  assert out['valid_tail_ours'] == pytest.approx([0.100, 0.101, 0.102])
  assert out['valid_tail_mmrec'] == pytest.approx([0.200, 0.201, 0.202])
  assert out['welch']['p'] < 1e-4
  text = compare_curves.markdown('toy', out)
  assert '| toy | 50 | 1.00% / 1.00% | 4.00% |' in text
  csv = tmp_path / 'c.csv'
  compare_curves.write_csv(csv, compare_curves.ours_curves([ours]),
                           compare_curves.mmrec_curves(logs))
  lines = csv.read_text().splitlines()
  assert lines[0].split(',')[:4] == ['epoch', 'loss_ours0', 'loss_ours1',
                                     'loss_ours2']
  assert len(lines) == 51
  assert float(lines[1].split(',')[4]) == pytest.approx(0.98)  # mmrec0, e 0


def test_early_stop_is_mmrecs_rule():
  # Rounded to 4 places: 0.10001 does not beat 0.1; more than 2 bad
  # epochs stop (patience 2).
  valid = [0.05, 0.1, 0.10001, 0.09, 0.08, 0.2]
  assert compare_curves.early_stop(valid, patience=2) == 1
  assert compare_curves.early_stop(valid, patience=3) == 5


def test_an_unfinished_mmrec_log_is_refused(tmp_path):
  log = tmp_path / 'm.log'
  log.write_text('epoch 0: train 1 s\n')
  with pytest.raises(SystemExit, match='no BENCH_RESULT line'):
    compare_curves.mmrec_curves([log])


def test_official_side_compares_test_curves_and_chosen_parts(tmp_path):
  # Ours logs parts a and b (half the loss each); the official log has only
  # a per-batch 'loss' and test metrics.
  ours = _ours(tmp_path / 'ours', [([2.0, 1.0], [0.1, 0.2])])
  runs = compare_curves.ours_curves([ours], parts=['a'])
  assert runs[0]['loss'] == [1.0, 0.5]  # part a alone
  per_epoch = [{'epoch': e, 'loss': l, 'test': {'recall@20': t}}
               for e, (l, t) in enumerate(zip([1.1, 0.5], [0.3, 0.4]))]
  log = tmp_path / 'official.log'
  # DiffMM: 2,048 rows in batches of 1,024 (its divisor n // B = its 2
  # batches): the logged loss is already the mean per batch.
  log.write_text('BENCH_RESULT ' + json.dumps(
      {'codebase': 'diffmm', 'n_train': 2048,
       'official_args': {'batch': 1024}, 'metrics_per_epoch': per_epoch}))
  official = compare_curves.official_curves([log])
  # The official test curve stands in for validation: test against test.
  assert official == [{'loss': [1.1, 0.5], 'valid': [0.3, 0.4],
                       'test': [0.3, 0.4]}]
  out = tmp_path / 'out.md'
  assert compare_curves.main(['--model', 'X', '--ours', str(ours),
                              '--official', str(log), '--parts', 'a',
                              '--from-epoch', '0', '--last', '2',
                              '--out', str(out)]) == 0
  text = out.read_text()
  assert 'test R@20' in text and 'official seed spread' in text
  assert 'early stop' not in text  # the official code selects on test
  # |1.0 - 1.1| / 1.1 at epoch 0, 0 at epoch 1: median 4.55%, max 9.09%.
  assert '| X | 2 | 4.55% / 9.09% |' in text


@pytest.mark.parametrize('codebase,args,n_train,factor', [
    # DiffMM on TikTok: 59,541 rows, 59 batches of 1,024, divided by 58.
    ('diffmm', {'batch': 1024}, 59541, 58 / 59),
    ('diffmm', {'batch': 1024}, 3 * 1024, 1.0),
    # MMSSL: a sum over n // B + 1 batches (TikTok: 59).
    ('mmssl', {'batch_size': 1024}, 59541, 1 / 59),
    ('mmssl', {'batch_size': 16}, 145, 1 / 10)])
def test_official_losses_become_means_per_batch(tmp_path, codebase, args,
                                                n_train, factor):
  log = tmp_path / 'official.log'
  log.write_text('BENCH_RESULT ' + json.dumps(
      {'codebase': codebase, 'n_train': n_train, 'official_args': args,
       'metrics_per_epoch': [{'loss': 5.9, 'test': {'recall@20': 0.1}}]}))
  [curve] = compare_curves.official_curves([log])
  assert curve['loss'] == [pytest.approx(5.9 * factor)]

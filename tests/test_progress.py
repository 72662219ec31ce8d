"""The in-epoch progress bar: its numbers, its drawing, and that feeding it
from the epoch's segments leaves every result bit for bit the same."""

import io

import jax
import numpy as np

from configs import tiny
from mentor_jax import data as data_lib
from mentor_jax import progress
from mentor_jax import epoch as epoch_lib


class FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _bar(tty, n_steps=10, final_epoch=2):
  clock, out, lines = FakeClock(), io.StringIO(), []
  bar = progress.EpochProgress(n_steps, final_epoch, stream=out, tty=tty,
                               log=lines.append, clock=clock)
  return bar, clock, out, lines


def test_terminal_bar_redraws_at_most_4_times_a_second_and_completes():
  bar, clock, out, _ = _bar(tty=True)
  with bar:
    bar.start(0)
    clock.now = 0.1
    bar.update(1)  # A segment finished; too soon to redraw.
    assert out.getvalue() == ''
    clock.now = 0.4
    bar.update(4)
    drawn = out.getvalue()
    # 4 steps in 0.4 s: 10 steps/s, 0.6 s left in this epoch, and two more
    # epochs of 1.0 s each (no finished epoch yet: this one's estimate).
    assert drawn.startswith('\r') and drawn.endswith('\x1b[K')
    assert ' 4/10 ' in drawn and '10.00 steps/s' in drawn
    assert 'epoch ETA 1s' in drawn and 'run ETA <= 3s' in drawn
    assert '[############------------------]' in drawn  # 12 of 30 = 40 %
    clock.now = 0.5
    bar.update(5)  # 0.1 s after the last redraw: skipped.
    assert out.getvalue() == drawn
    clock.now = 1.0
    bar.finish(epoch_seconds=1.2)
  final = out.getvalue()[len(drawn):]
  # The completed bar, then erased so that the epoch's summary line
  # replaces it.
  assert ' 10/10 ' in final and final.endswith('\r\x1b[K')
  bar.update(7)  # After finish: nothing drawn.
  assert out.getvalue() == drawn + final


def test_run_eta_uses_finished_epochs_after_the_first():
  bar, clock, _, _ = _bar(tty=True, n_steps=10, final_epoch=5)
  for epoch, seconds in enumerate((30.0, 2.0, 4.0)):  # 30 s: compiling.
    bar.start(epoch)
    bar.finish(epoch_seconds=seconds)
  clock.now = 100.0
  bar.start(3)
  clock.now = 101.0
  bar.update(5)
  status = bar.status()
  assert status['steps_per_s'] == 5.0 and status['epoch_eta_s'] == 1.0
  # Epochs 4 and 5 remain after this one, at the median of 2 s and 4 s.
  assert status['run_eta_s'] == 1.0 + 2 * 3.0


def test_plain_lines_when_not_a_terminal():
  bar, clock, out, lines = _bar(tty=False)
  bar.start(1)
  for step, t in ((1, 10.0), (2, 29.0), (3, 31.0), (4, 40.0), (9, 62.0)):
    clock.now = t
    bar.update(step)
  bar.finish()
  assert out.getvalue() == ''  # No control characters in a log file.
  assert len(lines) == 2, lines  # At 31 s and 62 s: one per 30 s at most.
  assert lines[0].startswith('epoch 1/2: 3/10 steps (30%)')
  assert lines[1].startswith('epoch 1/2: 9/10 steps (90%)')


def test_an_error_mid_epoch_erases_the_half_drawn_bar():
  bar, clock, out, _ = _bar(tty=True)
  try:
    with bar:
      bar.start(0)
      clock.now = 1.0
      bar.update(3)
      raise RuntimeError('diverged')
  except RuntimeError:
    pass
  assert out.getvalue().endswith('\r\x1b[K')
  bar.update(4)  # No longer running.
  assert out.getvalue().endswith('\r\x1b[K')


def test_disabled_bar_writes_nothing():
  out = io.StringIO()
  bar = progress.EpochProgress(5, 3, stream=out, tty=True, enabled=False)
  with bar:
    bar.start(0)
    bar.update(5)
    bar.finish(1.0)
  assert out.getvalue() == ''


def test_format_duration():
  assert [progress.format_duration(s) for s in (4.4, 65, 3 * 3600 + 720)] == [
      '4s', '1m05s', '3h12m']
  assert progress.format_duration(float('inf')) == '?'


def test_the_epoch_reports_each_segment_and_splitting_changes_no_bit(
    tiny_dataset, monkeypatch):
  # The epoch runs as segments of steps (epoch.run_epoch); the host learns
  # from each segment's end how far it is. One segment per step and the
  # whole epoch as one segment must give the same bits.
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  dataset = data_lib.load_dataset(tiny_dataset)
  setup = epoch_lib.setup(config, dataset)
  n_steps = data_lib.steps_per_epoch(dataset.n_train, setup.hp.batch_size)
  assert n_steps > 2
  kw = dict(graphdef=setup.graphdef, family=setup.family, hp=setup.hp)

  def two_epochs(on_progress):
    # A copy of the state each time: the epoch donates its input.
    state = jax.tree.map(lambda x: x.copy(), setup.state)
    outs = []
    for _ in range(2):
      state, parts, scores = epoch_lib.train_epoch(
          state, setup.rest, setup.data, on_progress=on_progress, **kw)
      outs.append((parts, scores))
    return jax.device_get((state, outs))

  seen = []
  monkeypatch.setattr(epoch_lib, 'SEGMENT_S', 0.0)
  with_bar = two_epochs(seen.append)
  # Every step, one segment each (n_steps < SEGMENTS), in order.
  assert seen == list(range(1, n_steps + 1)) * 2, seen
  monkeypatch.setattr(epoch_lib, 'SEGMENT_S', 1e9)
  whole = []
  one_segment = two_epochs(whole.append)
  # The first step alone (timed), then the rest as one segment.
  assert whole == [1, n_steps] * 2
  flat_a, tree_a = jax.tree.flatten(with_bar)
  flat_b, tree_b = jax.tree.flatten(one_segment)
  assert tree_a == tree_b
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

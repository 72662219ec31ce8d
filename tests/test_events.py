"""TensorBoard event files, read back with a parser written here from the
formats' definitions (TFRecord framing with masked CRC-32C; the Event,
Summary and Summary.Value protobuf fields that TensorBoard reads), not with
the library that wrote them."""

import json
import math
import struct

import numpy as np
import pytest

from configs import tiny
from mentor_jax import events
from mentor_jax import train


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
  crc = _crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    b = buf[i]
    i += 1
    value |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return value, i


def _fields(buf: bytes):
  """(field number, wire type, value) of a protobuf message."""
  i = 0
  while i < len(buf):
    key, i = _varint(buf, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _varint(buf, i)
    elif wire == 1:
      value, i = buf[i:i + 8], i + 8
    elif wire == 2:
      n, i = _varint(buf, i)
      value, i = buf[i:i + n], i + n
    elif wire == 5:
      value, i = buf[i:i + 4], i + 4
    else:
      raise AssertionError(f'wire type {wire}')
    yield number, wire, value


def read_events(path):
  """[(step, {tag: value}, file_version)] of an event file, CRCs checked."""
  raw = path.read_bytes()
  out, i = [], 0
  while i < len(raw):
    header = raw[i:i + 8]
    (length,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', raw[i + 8:i + 12])[0] == _masked(header)
    data = raw[i + 12:i + 12 + length]
    assert struct.unpack('<I', raw[i + 12 + length:i + 16 + length])[0] == (
        _masked(data))
    i += 16 + length
    step, scalars, version = 0, {}, None
    for number, _, value in _fields(data):
      if number == 2:  # Event.step
        step = value
      elif number == 3:  # Event.file_version
        version = value.decode()
      elif number == 5:  # Event.summary
        for n, _, v in _fields(value):
          assert n == 1  # Summary.value
          tag = simple = None
          for vn, vw, vv in _fields(v):
            if vn == 1:  # Summary.Value.tag
              tag = vv.decode()
            elif vn == 2 and vw == 5:  # Summary.Value.simple_value
              (simple,) = struct.unpack('<f', vv)
          scalars[tag] = simple
    out.append((step, scalars, version))
  return out


def _record(epoch, bpr):
  return {'epoch': epoch, 'step': 10 * (epoch + 1),
          'loss': {'bpr': bpr, 'reg': 0.001},
          'train_time_s': 1.5, 'eval_time_s': 0.25,
          'valid': {'recall@10': 0.1 + epoch, 'ndcg@10': float('nan')},
          'test': {'recall@10': 0.2 + epoch}, 'best_epoch': epoch}


def test_scalars_of_a_record():
  got = events.record_scalars(_record(3, 0.5))
  assert got == {'loss/bpr': 0.5, 'loss/reg': 0.001, 'loss/total': 0.501,
                 'valid/recall@10': 3.1, 'test/recall@10': 3.2,
                 'time/train_s': 1.5, 'time/eval_s': 0.25}  # NaN left out


def test_a_restart_replays_records_into_one_file(tmp_path):
  stranger = tmp_path / 'events.out.tfevents.1.other'
  stranger.write_bytes(b'not ours')
  writer = events.TensorBoardWriter(tmp_path)
  for epoch in range(3):
    writer.write(_record(epoch, 0.7 - 0.1 * epoch))
  writer.close()
  # A resume after epoch 0: the trainer replays the kept record, then
  # trains epochs 1 and 2 again (here with other losses).
  writer = events.TensorBoardWriter(tmp_path, [_record(0, 0.7)])
  writer.write(_record(1, 0.55))
  writer.close()
  files = events.event_files(tmp_path)
  assert files == [writer.path]
  assert stranger.read_bytes() == b'not ours'
  got = read_events(writer.path)
  assert got[0][2] == 'brain.Event:2' and got[0][1] == {}
  steps = [(step, s['loss/bpr']) for step, s, _ in got[1:]]
  assert [s for s, _ in steps] == [0, 1]
  np.testing.assert_allclose([b for _, b in steps], [0.7, 0.55], rtol=1e-6)


def test_training_writes_every_epoch_to_tensorboard(tiny_dataset, tmp_path):
  config = tiny.get_config()
  config.data_npz = str(tiny_dataset)
  config.epochs = 2
  train.train_and_evaluate(config, tmp_path)
  log = [json.loads(l) for l in
         (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  (path,) = events.event_files(tmp_path)
  got = read_events(path)[1:]
  assert [step for step, _, _ in got] == [0, 1]
  for (_, scalars, _), record in zip(got, log):
    want = events.record_scalars(record)
    assert set(scalars) == set(want)
    assert {'loss/bpr', 'loss/total', 'valid/recall@20', 'test/ndcg@50',
            'time/train_s', 'time/eval_s'} <= set(scalars)
    for tag, value in want.items():
      assert math.isclose(scalars[tag], np.float32(value), rel_tol=1e-7), tag


def test_tensorboard_reads_the_file_when_installed(tmp_path):
  accumulator = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator')
  writer = events.TensorBoardWriter(tmp_path, [_record(0, 0.7),
                                               _record(1, 0.6)])
  writer.close()
  acc = accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  got = [(e.step, e.value) for e in acc.Scalars('loss/bpr')]
  assert [s for s, _ in got] == [0, 1]
  np.testing.assert_allclose([v for _, v in got], [0.7, 0.6], rtol=1e-6)

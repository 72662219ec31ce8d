"""The device mesh: one 1-D axis, 'data', over every device of every process.

What the math needs to know about it (the axis name, the context mesh's
size) lives here, so that the operators (`ops.infonce`) and the trainer can
ask without depending on the placement machinery in `distributed.py`.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

AXIS = 'data'


def make_mesh(mesh_shape: Any = 'auto') -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over all devices, or the first n of them.

  Args:
    mesh_shape: 'auto' (every device of every process), an int n, or a
      1-tuple (n,). Less than all devices is for benchmarks on one host.

  Returns:
    The mesh, with AxisType.Auto so that jit's partitioner (not
    sharding-in-types) propagates the shardings.
  """
  devices = jax.devices()
  n = device_count(mesh_shape)
  n = len(devices) if n is None else n
  if not 1 <= n <= len(devices):
    raise ValueError(f'mesh_shape={mesh_shape!r} asks for {n} devices; '
                     f'{len(devices)} are available')
  if n < len(devices) and jax.process_count() > 1:
    raise ValueError('with several processes the mesh must span all devices')
  return jax.make_mesh((n,), (AXIS,), (jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def device_count(mesh_shape: Any) -> int | None:
  """The devices `config.mesh_shape` asks for; None for all ('auto').

  Accepts 'auto', n >= 1, (n,), and their command-line text ('2', '(2,)',
  '2,'): a `--config.mesh_shape=2` override arrives as a string, since the
  default is 'auto'.

  Raises:
    ValueError: anything else (a 2-D shape, n < 1, another string).
  """
  value = mesh_shape
  if isinstance(value, str):
    text = value.strip()
    if text in ('auto', ''):
      return None
    inner = text[1:-1] if text[:1] + text[-1:] == '()' else text
    parts = [p.strip() for p in inner.split(',')]
    value = tuple(parts[:-1] if len(parts) > 1 and not parts[-1] else parts)
    if not all(p.isdigit() for p in value):
      raise ValueError(f'mesh_shape={mesh_shape!r}: expected \'auto\', n or '
                       '(n,)')
    value = tuple(int(p) for p in value)
  if value is None:
    return None
  shape = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if (len(shape) != 1 or isinstance(shape[0], bool)
      or not isinstance(shape[0], numbers.Integral) or shape[0] < 1):
    raise ValueError(f'mesh_shape={mesh_shape!r}: only a 1-D data mesh of '
                     "n >= 1 devices is supported ('auto', n or (n,))")
  return int(shape[0])


def mesh_size() -> int:
  """Size of the 'data' axis of the context mesh (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[AXIS]


def constrain_batch(batches: Any) -> Any:
  """Shards an epoch's [n_steps, batch] arrays along the batch axis.

  Called inside `epoch.begin_epoch`; without a context mesh (single device,
  the default) it returns its input, so the trainer's code is unchanged.
  """
  n = mesh_size()
  if n == 1:
    return batches
  def pin(x):
    if x.ndim < 2 or x.shape[1] % n:
      return x
    return jax.lax.with_sharding_constraint(x, P(None, AXIS))
  return jax.tree.map(pin, batches)

"""The device mesh: one 1-D axis, 'data', over every device of every process.

What the math needs to know about it (the axis name, the context mesh's
size) lives here, so that the operators (`ops.infonce`) and the trainer can
ask without depending on the placement machinery in `distributed.py`.
"""

from __future__ import annotations

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
  if mesh_shape in ('auto', None, ''):
    n = len(devices)
  else:
    shape = tuple(mesh_shape) if isinstance(mesh_shape, (tuple, list)) else (
        int(mesh_shape),)
    if len(shape) != 1:
      raise ValueError(f'mesh_shape={mesh_shape!r}: only a 1-D data mesh '
                       "is supported ('auto', n or (n,))")
    n = shape[0]
  if not 1 <= n <= len(devices):
    raise ValueError(f'mesh_shape={mesh_shape!r} asks for {n} devices; '
                     f'{len(devices)} are available')
  if n < len(devices) and jax.process_count() > 1:
    raise ValueError('with several processes the mesh must span all devices')
  return jax.make_mesh((n,), (AXIS,), (jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


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

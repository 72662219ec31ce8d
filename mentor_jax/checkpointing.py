"""Orbax checkpoints of a training run: resume, evaluate, recommend.

Layout under `<workdir>/checkpoints/`, one Orbax step per epoch (0-based):

  latest/<epoch>/  params, opt_state, meta   every `checkpoint_every_epochs`
  best/<epoch>/    params, scores, meta      the best validation epoch (keep 1)

Each step is a Composite of separately restorable items:
  * 'params': the model's nnx.Param state;
  * 'opt_state': the optax state (latest only);
  * 'scores': {'user': [U, D], 'item': [I, D]}, the embeddings that were
    ranked at that epoch (best only). With eval_embeddings='last_step' they
    come from the last training step's forward pass, i.e. from the parameters
    *before* the epoch's last update, so no function of the saved params
    reproduces them. Saving them (a few MB) keeps evaluate and recommend
    exact without carrying a second copy of the params through the compiled
    epoch;
  * 'meta': JSON with the loop counters, the RNG key, the early-stopping state,
    the best epoch's metrics, the config and a shape signature.

Orbax writes each step into a temporary directory and renames it when
complete, so a killed run leaves the previous steps readable; leftover
temporary directories are removed when training reopens the directory.
"""

from __future__ import annotations

import errno
import pathlib
import resource
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mentor_jax import errors

FORMAT_VERSION = 1
LATEST = 'latest'
BEST = 'best'


class CheckpointMismatchError(errors.CheckpointError):
  """A checkpoint was written for another model, dataset or shape."""


class DamagedCheckpointError(errors.CheckpointError):
  """A step directory that cannot be read back (cut short, corrupted)."""


def _leaf_name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _tree_signature(tree: Any) -> dict[str, str]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(p): f'{jnp.dtype(x.dtype).name}{list(x.shape)}'
          for p, x in leaves}


def signature(model_name: str, dataset: Any, params: Any,
              opt_state: Any = None) -> dict[str, Any]:
  """What must match for a checkpoint to fit a model (JSON-able).

  Args:
    model_name: `config.model`.
    dataset: a `data.Dataset`.
    params: the model's parameter pytree (arrays or ShapeDtypeStructs).
    opt_state: the optimizer's state, for a checkpoint that resumes
      training (the family's optimizer owns its structure).

  Returns:
    {'model', 'data_sha256', 'n_users', 'n_items', 'dim_v', 'dim_t',
     'params': {leaf path: 'dtype[shape]'}} and 'opt_state' likewise if
    given; 'data_sha256' is the dataset's content digest
    (`data.content_digest`), so that a dataset of the same shape but other
    content is not mixed into a run.
  """
  out = {
      'model': model_name,
      'data_sha256': dataset.digest,
      'n_users': dataset.n_users,
      'n_items': dataset.n_items,
      'dim_v': dataset.dim_v,
      'dim_t': dataset.dim_t,
      'params': _tree_signature(params),
  }
  if opt_state is not None:
    out['opt_state'] = _tree_signature(opt_state)
  return out


def check_signature(saved: dict[str, Any], current: dict[str, Any],
                    where: str | pathlib.Path, *,
                    allow_other_data: bool = False) -> None:
  """Raises CheckpointMismatchError naming every difference.

  Args:
    saved: the signature stored in the checkpoint.
    current: the signature of the model the caller wants to fill.
    where: the checkpoint path, for the message.
    allow_other_data: accept (with a warning) a dataset whose content
      differs when every shape matches (`config.resume_other_data`).
  """
  data_key = 'data_sha256'
  other_data = saved.get(data_key) != current.get(data_key)
  diffs = [f'{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}'
           for k in sorted(set(saved) | set(current))
           if k not in ('params', 'opt_state', data_key)
           and saved.get(k) != current.get(k)]
  ps, pc = saved.get('params', {}), current.get('params', {})
  # Parameter differences follow from the scalar ones; list them only when
  # they are the whole story (or a few of them otherwise).
  param_diffs = [f'param {k}: checkpoint {ps.get(k, "absent")}, now '
                 f'{pc.get(k, "absent")}'
                 for k in sorted(set(ps) | set(pc)) if ps.get(k) != pc.get(k)]
  if param_diffs:
    shown = param_diffs[:5]
    if len(param_diffs) > 5:
      shown.append(f'... and {len(param_diffs) - 5} more parameters')
    diffs += shown
  # The optimizer's state (checkpoints written before it was recorded have
  # none to compare): its structure changes with the optimizer's settings,
  # e.g. a learning-rate schedule switched on.
  so, co = saved.get('opt_state'), current.get('opt_state')
  if so is not None and co is not None and so != co and not param_diffs:
    diffs.append(
        f'the optimizer state: {len(so)} arrays in the checkpoint, {len(co)} '
        'now (the optimizer or its settings changed, e.g. '
        'learning_rate_scheduler)')
  if other_data and not diffs and allow_other_data:
    logging.warning('the checkpoint in %s was trained on other data (%s: '
                    'checkpoint %r, now %r); continuing on the new data as '
                    'config.resume_other_data asks', where, data_key,
                    saved.get(data_key), current.get(data_key))
    return
  if other_data:
    diffs.insert(0, f'{data_key} (the dataset\'s content): checkpoint '
                 f'{saved.get(data_key)!r}, now {current.get(data_key)!r}')
  if diffs:
    hint = ('' if len(diffs) > 1 or not other_data else
            ' To continue this run on the new data on purpose, pass '
            '--config.resume_other_data=True.')
    raise CheckpointMismatchError(
        f'the checkpoint in {where} was written for a different model or '
        'dataset:\n  ' + '\n  '.join(diffs) + '\nUse a fresh --workdir, or '
        'the config and dataset the checkpoint was trained with.' + hint)


def key_to_json(key: jax.Array) -> list[int]:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).astype(np.int64).ravel().tolist()


def put_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """`value` on the device(s) of `like`, committed only if `like` is."""
  if like.committed:
    return jax.device_put(value, like.sharding)
  return jax.device_put(value)


def key_from_json(values: list[int], like: jax.Array) -> jax.Array:
  """Rebuilds a PRNG key in the form (raw or typed) and place of `like`."""
  if jnp.issubdtype(like.dtype, jax.dtypes.prng_key):
    data = np.asarray(values, np.uint32).reshape(
        jax.random.key_data(like).shape)
    return jax.random.wrap_key_data(put_like(data, like),
                                    impl=jax.random.key_impl(like))
  return put_like(np.asarray(values, like.dtype).reshape(like.shape), like)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's current sharding.

  Restoring against them places every array where the freshly initialized
  one lives, whatever the device layout of the machine that wrote the
  checkpoint.
  """
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _restore_target(tree: Any) -> Any:
  # Uncommitted arrays (a plain single-device run) come back through the
  # host so that they stay uncommitted: committed ones would make jit build
  # a second executable of the epoch (same numbers, another compile).
  return jax.tree.map(
      lambda x: np.empty(x.shape, x.dtype)
      if isinstance(x, jax.Array) and not x.committed
      else ocp.utils.to_shape_dtype_struct(x), tree)


def _place(restored: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x,
      restored)


def _manager(directory: pathlib.Path, keep: int,
             read_only: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, create=not read_only,
      read_only=read_only, save_interval_steps=0 if read_only else 1,
      # A killed writer leaves `<step>.orbax-checkpoint-tmp-*`; Orbax never
      # lists those as steps, and the writer that reopens the run removes
      # them (a reader must not: the writer may still be running).
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(directory, options=options)


class Checkpointer:
  """The 'latest' and 'best' managers of one run.

  Best steps are pruned here, not by Orbax's max_to_keep: a best step is
  deleted only once a newer best is final *and* every retained latest step
  is at or after that newer one. Then whichever latest step a resume falls
  back to, the best step its meta names is still on disk, and a reader
  (evaluate, recommend) always finds a finished best step.
  """

  def __init__(self, directory: str | pathlib.Path, *, keep_latest: int = 2,
               read_only: bool = False,
               latest_of: 'Checkpointer | None' = None):
    """`latest_of`: the checkpointer whose latest steps a resume reads, if
    not this one's (a run of a stack: the stack's), for pruning best steps."""
    # Orbax wants absolute paths; workdirs are often relative.
    self.directory = pathlib.Path(directory).resolve()
    self.read_only = read_only
    self.latest = _manager(self.directory / LATEST, keep_latest, read_only)
    self.best = _manager(self.directory / BEST, None, read_only)
    self._resumed_from = latest_of or self

  def save_latest(self, epoch: int, params: Any, opt_state: Any,
                  meta: dict[str, Any]) -> None:
    """Starts an async save; arrays are copied to the host before it returns."""
    self._finish_pending()
    check_space(self.directory / LATEST, (params, opt_state, meta))
    self.latest.save(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)))

  def _finish_pending(self) -> None:
    """Awaits earlier saves (Orbax would before the next one anyway),
    turns a failed one into a clear error, then prunes best steps."""
    try:
      self.latest.wait_until_finished()
      self.best.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      full = errors.storage_error(e, str(self.directory))
      if full is not None:
        raise full from e
      raise
    self._prune_best()

  def _prune_best(self) -> None:
    latest = self._resumed_from.latest.all_steps()
    if not latest:
      return
    oldest_latest = min(latest)
    steps = sorted(self.best.all_steps())
    anchor = max((b for b in steps if b <= oldest_latest), default=None)
    for step in steps:
      if anchor is not None and step < anchor:
        self.best.delete(step)

  def save_best(self, epoch: int, params: Any, scores: tuple[Any, Any],
                meta: dict[str, Any]) -> None:
    self._finish_pending()
    check_space(self.directory / BEST, (params, scores, meta))
    scores = dict(zip(('user', 'item'), scores))
    # Their shapes, so that a reader can restore them onto its own device.
    meta = dict(meta, scores={
        k: {'shape': list(v.shape), 'dtype': jnp.dtype(v.dtype).name}
        for k, v in scores.items()})
    self.best.save(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        scores=ocp.args.StandardSave(scores),
        meta=ocp.args.JsonSave(meta)))

  def restore_best_scores(self, step: int) -> tuple[jax.Array, jax.Array]:
    """The (user, item) embeddings ranked at best step `step`."""
    meta = read_meta(self.best, step)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    scores = {name: jax.ShapeDtypeStruct(tuple(s['shape']), s['dtype'],
                                         sharding=device)
              for name, s in meta['scores'].items()}
    out = restore_items(self.best, step, scores=scores)['scores']
    return out['user'], out['item']

  def restore_latest(self, params: Any, opt_state: Any,
                     current_signature: dict[str, Any], *,
                     allow_other_data: bool = False
                     ) -> tuple[Any, Any, dict[str, Any]] | None:
    """(params, opt_state, meta) of the newest intact latest step, or None.

    A step that cannot be read back (a broken meta JSON, a truncated array
    file, an empty folder) is moved aside to `<step>.damaged`, with a
    warning that says why, and the next older step is tried: it is a fault
    of the disk or of a kill, not of the user's setup. A step written for
    another model or dataset is not skipped: that is the user's mistake.

    Args:
      params: a pytree like the params to restore (arrays or abstract); its
        shardings say where the restored arrays go.
      opt_state: likewise for the optimizer state.
      current_signature: `signature(...)` of the model being trained.
      allow_other_data: see `check_signature`.

    Raises:
      CheckpointMismatchError: the checkpoint belongs to another setup.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      where = self.directory / LATEST / str(step)
      try:
        meta = read_meta(self.latest, step)
        check_signature(meta['signature'], current_signature, where,
                        allow_other_data=allow_other_data)
        out = self.latest.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_restore_target(params)),
            opt_state=ocp.args.StandardRestore(_restore_target(opt_state))))
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        # Orbax, tensorstore and json raise many types for a damaged step.
        self._set_aside(where, e)
        continue
      return _place(out['params']), _place(out['opt_state']), meta
    return None

  def _set_aside(self, where: pathlib.Path, error: Exception) -> None:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else (
        type(error).__name__)
    aside = where.with_name(f'{where.name}.damaged')
    n = 1
    while aside.exists():
      n += 1
      aside = where.with_name(f'{where.name}.damaged{n}')
    where.rename(aside)  # Orbax lists only integer-named steps.
    self.latest.reload()
    logging.warning('skipped checkpoint %s: it cannot be read back (%s: %s); '
                    'moved it to %s and trying the previous one', where,
                    type(error).__name__, reason[:300], aside.name)

  def drop_best_after(self, epoch: int) -> None:
    """Deletes best steps newer than `epoch` (a resume replays them)."""
    for step in self.best.all_steps():
      if step > epoch:
        self.best.delete(step)

  def close(self) -> None:
    """Waits for in-flight saves, prunes best steps, releases the managers."""
    try:
      if not self.read_only:
        self._finish_pending()
    finally:
      for manager in (self.latest, self.best):
        manager.close()


# Room kept free beside a checkpoint's own bytes.
_SPACE_MARGIN = 1 << 20


def check_space(directory: pathlib.Path, tree: Any) -> None:
  """Refuses a save that cannot fit, before Orbax starts writing.

  A save that fails half-way fails in Orbax's background threads, which
  print hundreds of lines of tracebacks; checking the free space (and the
  process's file-size limit, `ulimit -f`) against the raw size of the
  arrays first gives one clear error instead. Orbax leaves nothing behind
  that blocks the next run (its temporary folders are removed on reopen).

  Raises:
    StorageError: naming the folder, the bytes needed and those available.
  """
  leaves = jax.tree.leaves(tree)
  need = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in leaves if hasattr(x, 'dtype')) + _SPACE_MARGIN
  existing = directory if directory.exists() else directory.parent
  free = shutil.disk_usage(existing).free
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
  if limit != resource.RLIM_INFINITY and limit < need:
    raise errors.StorageError(
        errno.EFBIG, f'no space left writing {directory}: a checkpoint needs '
        f'about {need / 2**20:.1f} MiB, but this process may write files '
        f'of at most {limit / 2**20:.1f} MiB (ulimit -f). Raise the limit '
        'and run the same command again: training resumes from the last '
        'complete checkpoint.')
  if free < need:
    raise errors.StorageError(
        errno.ENOSPC, f'no space left writing {directory}: a checkpoint '
        f'needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are '
        'free. Free some space and run the same command again: training '
        'resumes from the last complete checkpoint.')


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  meta = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']
  if not isinstance(meta, dict) or 'signature' not in meta:
    raise DamagedCheckpointError(
        f'step {step} in {manager.directory}: its meta is not a checkpoint '
        'meta record')
  if meta.get('format') != FORMAT_VERSION:
    raise CheckpointMismatchError(
        f'step {step} in {manager.directory} has checkpoint format '
        f'{meta.get("format")!r}; this code reads format {FORMAT_VERSION}')
  return meta


def resolve(path: str | pathlib.Path) -> tuple[pathlib.Path, int]:
  """(manager directory, step) for a workdir, a manager dir or a step dir.

  A workdir means its best checkpoint; a manager directory (e.g.
  `<workdir>/checkpoints/latest`) its newest step.

  Raises:
    CheckpointError: nothing restorable there.
  """
  path = pathlib.Path(path).resolve()
  if (path / 'checkpoints' / BEST).is_dir():
    path = path / 'checkpoints' / BEST
  elif (path / BEST).is_dir():
    path = path / BEST
  if path.name.isdigit() and (path / 'meta').is_dir():
    return path.parent, int(path.name)
  steps = sorted(int(p.name) for p in path.glob('*')
                 if p.name.isdigit() and (p / 'meta').is_dir())
  if not steps:
    raise errors.CheckpointError(
        f'no checkpoint in {path}: expected a training --workdir, '
        f'<workdir>/checkpoints/{BEST} or one of its step directories')
  return path, steps[-1]


def read_only_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  return _manager(directory, 1, read_only=True)


def restore_items(manager: ocp.CheckpointManager, step: int,
                  **items: Any) -> dict[str, Any]:
  """Restores only the named array items, e.g. params=abstract_params."""
  args = {name: ocp.args.StandardRestore(abstract_like(like))
          for name, like in items.items()}
  return dict(manager.restore(step, args=ocp.args.Composite(**args)))

"""In-process shims that let the reference PyTorch code run here unmodified.

Shared by ref_worker.py (the official MENTOR code) and mmrec_worker.py
(MMRec's models). Each shim restores something the reference code expects
from an older library or from a GPU, changes nothing else, and applies to
the calling process only; the checkouts themselves are never modified.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import pkgutil
import resource
import sys
import types

GIB = float(1 << 30)

# Modules the reference code imports at module level but never calls on the
# training and evaluation path (image loading from lmdb, torchvision
# transforms, loss plots), with the attributes it imports from them.
UNUSED_MODULES = {
    'lmdb': [],
    'torchvision': ['transforms'],
    'torchvision.transforms': ['functional'],
    'torchvision.transforms.functional': ['pad', 'resize'],
    'matplotlib': ['pyplot'],
    'matplotlib.pyplot': [],
    # MMRec's SLMRec imports these at module level and never calls them
    # (the one use of scatter is commented out).
    'torch_scatter': ['scatter'],
    'sklearn': ['cluster'],
    'sklearn.cluster': ['KMeans'],
}


def stub_unused_modules(stubs: dict[str, list[str]] | None = None
                        ) -> list[str]:
  """Empty modules for imports that the timed path never calls.

  A package that is really installed is used as it is; only missing ones are
  replaced. Returns the names of the top-level packages that were stubbed.
  """
  stubs = UNUSED_MODULES if stubs is None else stubs
  missing = set()
  for root in {name.split('.')[0] for name in stubs}:
    try:
      importlib.import_module(root)  # really installed: use it
    except ImportError:
      missing.add(root)
  for name in stubs:
    if name.split('.')[0] in missing and name not in sys.modules:
      stub = types.ModuleType(name)
      stub.__path__ = []  # a package, so that `import a.b` resolves
      # A spec without an origin: importlib.util.find_spec (torch._dynamo
      # probes sklearn with it) accepts the stub and finds no files.
      stub.__spec__ = importlib.machinery.ModuleSpec(name, None,
                                                     is_package=True)
      sys.modules[name] = stub
  for name, attrs in stubs.items():
    mod = sys.modules.get(name)
    if mod is None or getattr(mod, '__file__', None):
      continue
    for attr in attrs:
      full = f'{name}.{attr}'
      setattr(mod, attr, sys.modules.get(full, lambda *a, **k: None))
  return sorted(missing)


def restore_numpy_aliases() -> list[str]:
  """`np.float` etc. (removed in numpy 1.24), which the metrics code uses.

  The aliases always meant the builtins, so restoring them changes nothing
  else. Returns the aliases that were added.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  added = []
  for alias, builtin in (('float', float), ('int', int), ('bool', bool),
                         ('object', object)):
    if alias not in np.__dict__:
      setattr(np, alias, builtin)
      added.append(alias)
  return added


def make_cuda_a_noop() -> None:
  """`Tensor.cuda()` returns the tensor itself (for a CPU-only machine).

  Code that calls `.cuda()` unconditionally (MENTOR's perturbed GCN branch,
  MMRec LATTICE's fixed item graphs) otherwise stops on a CPU; everything
  else in it already follows `config['device']`.
  """
  import torch  # pylint: disable=g-import-not-at-top
  torch.Tensor.cuda = lambda self, *a, **k: self


def restore_dok_update() -> bool:
  """`scipy.sparse.dok_matrix._update` (gone from newer scipy).

  MMRec's `get_norm_adj_mat` (LightGCN, FREEDOM, BM3, LGMRec) fills the
  adjacency with `A._update(dict)`, which was a plain `dict.update` of the
  (row, col) -> value store bypassing the per-item checks. The rewritten
  class (no longer a dict subclass; scipy 1.17 here) keeps that store as
  `_dict`; updating it is the same operation.
  Returns True if the method had to be added.
  """
  import scipy  # pylint: disable=g-import-not-at-top
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  if hasattr(sp.dok_matrix, '_update'):
    return False
  probe = sp.dok_matrix((1, 1))
  if not isinstance(getattr(probe, '_dict', None), dict):
    raise RuntimeError('scipy.sparse.dok_matrix has neither _update nor a '
                       f'_dict store (scipy {scipy.__version__}); install '
                       'an older scipy in the reference environment')

  def _update(self, data):
    self._dict.update(data)  # pylint: disable=protected-access
  sp.dok_matrix._update = _update  # pylint: disable=protected-access
  return True


def unregister_result_embeds(model) -> bool:
  """Makes the `result_embed*` caches plain tensors, as they are on a GPU.

  The constructor builds them as `nn.Parameter(...).to(self.device)`. On a
  GPU `.to('cuda')` returns a plain (non-Parameter) copy, so they are
  ordinary attributes, outside `model.parameters()` and the optimizer, and
  `forward` may assign tensors to them. On a CPU `.to('cpu')` returns the
  Parameter itself, which registers it, and the first `forward` fails with
  "cannot assign 'torch.FloatTensor' as parameter 'result_embed'". This is a
  second CPU-only failure beside `.cuda()`; undoing the registration before
  the optimizer is built reproduces the GPU behaviour exactly.

  Returns True if a cache was registered (MENTOR, MMRec's DualGNN on a CPU).
  """
  params = model._parameters  # pylint: disable=protected-access
  names = [n for n in params if n.startswith('result_embed')]
  for name in names:
    setattr(model, name, params.pop(name).detach())
  return bool(names)


def alias_package(alias: str, target: str) -> bool:
  """Makes `import alias.x` import `target.x` (for a stale import path).

  MMRec's LayerGCN imports `models.common.abstract_recommender`, a path
  left over from ImRec, where MMRec has `common.abstract_recommender`; the
  alias gives it MMRec's own modules. Returns True if it was added.
  """
  if alias in sys.modules:
    return False
  module = importlib.import_module(target)
  sys.modules[alias] = module
  for sub in pkgutil.iter_modules(module.__path__):
    sys.modules[f'{alias}.{sub.name}'] = importlib.import_module(
        f'{target}.{sub.name}')
  return True


def ru_maxrss_gib() -> float:
  """This process's own peak RSS (getrusage; ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def limit_address_space(gib: float) -> None:
  """Caps this process's virtual memory (RLIMIT_AS) at `gib` GiB.

  On a shared machine a reference model that needs more memory than there
  is (MMRec LATTICE keeps several dense item x item matrices) should fail
  with torch's own "can't allocate memory" error in this process, rather
  than wake the kernel's OOM killer, which may pick another user's job.
  """
  if gib <= 0:
    return
  limit = int(gib * GIB)
  _, hard = resource.getrlimit(resource.RLIMIT_AS)
  if hard != resource.RLIM_INFINITY:
    limit = min(limit, hard)
  resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# ------------------------- for the official DiffMM and MMSSL (official_worker)


def restore_numpy_asfarray() -> bool:
  """`np.asfarray` (removed in numpy 2.0), which MMSSL's metrics.py uses.

  It was `np.asarray(a, dtype)` with float64 for a non-float dtype.
  Returns True if it had to be added.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  if 'asfarray' in np.__dict__:
    return False

  def asfarray(a, dtype=np.float64):
    if not np.issubdtype(dtype, np.inexact):
      dtype = np.float64
    return np.asarray(a, dtype=dtype)
  np.asfarray = asfarray
  return True


def restore_sparse_dense_attr() -> bool:
  """`spmatrix.A` (removed in scipy 1.14), DiffMM's `trnMat.A`.

  It was the property `toarray()`. Returns True if it had to be added.
  """
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  if hasattr(sp.coo_matrix((1, 1)), 'A'):
    return False
  sp.spmatrix.A = property(lambda self: self.toarray())
  return True


def stub_missing_modules(stubs: dict[str, list[str]]) -> list[str]:
  """Empty modules for the names in `stubs` that cannot be imported.

  Unlike `stub_unused_modules`, each name is tried on its own, so that a
  missing submodule of an installed package (`torch.utils.tensorboard`
  without tensorboard) is stubbed too; missing parents are stubbed with
  it. Attributes are no-op callables. Returns the names stubbed.
  """
  stubbed = []
  for name, attrs in stubs.items():
    try:
      importlib.import_module(name)
      continue
    except ImportError:
      pass
    parts = name.split('.')
    for depth in range(1, len(parts) + 1):
      sub = '.'.join(parts[:depth])
      if sub in sys.modules:
        continue
      if depth < len(parts):
        try:
          importlib.import_module(sub)
          continue
        except ImportError:
          pass
      stub = types.ModuleType(sub)
      stub.__path__ = []
      stub.__spec__ = importlib.machinery.ModuleSpec(sub, None,
                                                     is_package=True)
      sys.modules[sub] = stub
      stubbed.append(sub)
      if depth > 1:
        setattr(sys.modules['.'.join(parts[:depth - 1])], parts[depth - 1],
                stub)
    for attr in attrs:
      if not hasattr(sys.modules[name], attr):
        setattr(sys.modules[name], attr, lambda *a, **k: None)
  return stubbed

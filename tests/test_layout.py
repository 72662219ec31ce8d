"""The package's import rules (docs/DESIGN.md, "Layout"), read from source.

Parses every module with `ast` (nothing is imported) and checks who may
import whom: shared operators stay model-free, models stay independent of
each other, and the math never reaches for the placement machinery.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / 'mentor_jax'


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(PKG.parent).with_suffix('')
  parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
  return '.'.join(parts)


SOURCES = sorted(PKG.rglob('*.py'))
MODULE_NAMES = {_module_name(p) for p in SOURCES}


def _project_imports(path: pathlib.Path) -> set[str]:
  """Fully qualified mentor_jax/data_prep modules imported by `path`."""
  tree = ast.parse(path.read_text(), filename=str(path))
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:
        # `from mentor_jax.ops import sparse` imports the module
        # mentor_jax.ops.sparse; `from mentor_jax.ops.sparse import Csr`
        # imports from mentor_jax.ops.sparse.
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in MODULE_NAMES else node.module)
  return {m for m in found if m.split('.')[0] in ('mentor_jax', 'data_prep')}


MODULES = {_module_name(p): _project_imports(p) for p in SOURCES}


def _resolved(imports: set[str]) -> set[str]:
  """Imports reduced to the project modules they name."""
  return {m for m in imports if m in MODULE_NAMES}


def _model_of(module: str) -> str | None:
  parts = module.split('.')
  if len(parts) >= 3 and parts[1] == 'models':
    return parts[2]
  return None


def test_layout_is_read():
  # The rules below would pass vacuously on an empty scan.
  assert 'mentor_jax.ops.infonce' in MODULES
  assert 'mentor_jax.models.mentor.objective' in MODULES
  assert 'mentor_jax.ops.sparse' in _resolved(MODULES['mentor_jax.data'])


@pytest.mark.parametrize('module', sorted(m for m in MODULES
                                          if m.startswith('mentor_jax.ops')))
def test_ops_import_only_ops_and_mesh(module):
  bad = {m for m in _resolved(MODULES[module])
         if not (m.startswith('mentor_jax.ops') or m == 'mentor_jax.mesh')}
  assert not bad, f'{module} imports {sorted(bad)}'


@pytest.mark.parametrize('module', sorted(m for m in MODULES if _model_of(m)))
def test_no_model_imports_another_model(module):
  own = _model_of(module)
  others = {m for m in _resolved(MODULES[module])
            if _model_of(m) and _model_of(m) != own}
  assert not others, f'{module} imports {sorted(others)}'


@pytest.mark.parametrize('module', sorted(m for m in MODULES if _model_of(m)))
def test_models_do_not_import_the_trainer_or_placement(module):
  banned = {'mentor_jax.distributed', 'mentor_jax.train',
            'mentor_jax.checkpointing', 'mentor_jax.registry'}
  bad = _resolved(MODULES[module]) & banned
  assert not bad, f'{module} imports {sorted(bad)}'


def test_infonce_is_defined_in_one_module():
  homes = set()
  for path in SOURCES:
    tree = ast.parse(path.read_text())
    if any(isinstance(n, ast.FunctionDef) and n.name.startswith('info_nce')
           for n in ast.walk(tree)):
      homes.add(_module_name(path))
  assert homes == {'mentor_jax.ops.infonce'}


def test_data_prep_does_not_import_mentor_jax():
  for path in (PKG.parent / 'data_prep').rglob('*.py'):
    bad = {m for m in _project_imports(path) if m.startswith('mentor_jax')}
    assert not bad, f'{path.name} imports {sorted(bad)}'


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every strongly connected component with more than one module (or a
  module importing itself): Tarjan's algorithm."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_cycle():
  # The rule below would pass vacuously if the finder saw nothing.
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert _cycles(graph) == [['a', 'b', 'c']]
  assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles():
  # Function-level imports count too (ast.walk sees every import). An
  # import of a package (mentor_jax.models) is an edge to its __init__.
  graph = {m: _resolved(imports) for m, imports in MODULES.items()}
  assert _cycles(graph) == []


@pytest.mark.parametrize('module, banned', [
    # The compiled parts and the bookkeeping sit below the loop.
    ('mentor_jax.epoch', {'mentor_jax.train', 'mentor_jax.stack',
                          'mentor_jax.runbook', 'mentor_jax.main'}),
    ('mentor_jax.stack', {'mentor_jax.train', 'mentor_jax.main'}),
    ('mentor_jax.runbook', {'mentor_jax.train', 'mentor_jax.stack',
                            'mentor_jax.epoch'}),
    # Readers of finished runs do not import the trainer.
    ('mentor_jax.evaluate', {'mentor_jax.train', 'mentor_jax.stack'}),
    ('mentor_jax.recommend', {'mentor_jax.train', 'mentor_jax.stack'}),
    ('mentor_jax.analysis', {'mentor_jax.train', 'mentor_jax.stack'}),
    # Serving reads exports and checkpoints, never the trainer.
    *((f'mentor_jax.serving.{m}', {'mentor_jax.train', 'mentor_jax.stack',
                                   'mentor_jax.runbook', 'mentor_jax.main'})
      for m in ('export', 'cold', 'index', 'server')),
    # The service runs from an export alone: no model code.
    ('mentor_jax.serving.server', {'mentor_jax.registry', 'mentor_jax.epoch',
                                   'mentor_jax.evaluate'}),
    ('mentor_jax.report', {'mentor_jax.train', 'mentor_jax.stack',
                           'mentor_jax.epoch'}),
    ('mentor_jax.train', {'mentor_jax.report', 'mentor_jax.main',
                          'mentor_jax.grid', 'mentor_jax.study'}),
    ('mentor_jax.grid', {'mentor_jax.study'}),
    # The study's tables read finished runs only.
    ('mentor_jax.study_tables', {'mentor_jax.train', 'mentor_jax.stack',
                                 'mentor_jax.epoch', 'mentor_jax.study'}),
])
def test_layering(module, banned):
  bad = _resolved(MODULES[module]) & banned
  assert not bad, f'{module} imports {sorted(bad)}'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: p.name)
def test_source_files_stay_small(path):
  # One concern per module: a file past this has grown a second one.
  n = len(path.read_text().splitlines())
  assert n <= 450, f'{path.relative_to(PKG.parent)}: {n} lines'

"""`config.model` name -> `ModelFamily`."""

from __future__ import annotations

from mentor_jax import baselines
from mentor_jax import family
from mentor_jax import objective


def _families() -> dict[str, family.ModelFamily]:
  families = {'mentor': objective.MENTOR}
  families.update({f.name: f for f in baselines.FAMILIES})
  return families


def get(name: str) -> family.ModelFamily:
  families = _families()
  if name not in families:
    raise ValueError(f'config.model={name!r}: unknown model; expected one of '
                     f'{sorted(families)}')
  return families[name]

"""Finds, or builds on first use, the prepared `.npz` a config names.

`config.data_npz` is the prepared file. If it is missing, `config.data_source`
says how to build it:

* `synth:<preset>`: a seeded synthetic dataset (`data_prep.synthetic`);
* a folder path: an MMRec-format dataset folder (`data_prep.convert`);
* empty: nothing is built and the error says how to get the data.

Relative paths in `data_npz` and a folder `data_source` are resolved against
the environment variable `MENTOR_DATA_ROOT` when it is set, else against the
current directory (`data/small.npz` is then `./data/small.npz`, as run from
the repository root). `resolve_data_path` is that rule's one home.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import ml_collections

from data_prep import convert as convert_lib
from data_prep import synthetic
from mentor_jax import data as data_lib

# Where users get the real Amazon datasets (MENTOR_SPEC §4).
DOWNLOAD_HINT = (
    'Download the MMRec-format folder (<name>.inter, image_feat.npy, '
    'text_feat.npy) from the MMRec Google Drive folder '
    '13cBy1EA_saTUuXxVllKgtfci2A09jyaG or the MENTOR one '
    '1tU4IxYbLXMkp_DbIOPGvCry16uPvolLk, then run\n'
    '  python -m data_prep convert --src DATA/<name> --out {npz}\n'
    'or pass --config.data_source=DATA/<name> to build it on first use.')


# Relative data paths are resolved against this folder when it is set.
DATA_ROOT_ENV = 'MENTOR_DATA_ROOT'


def resolve_data_path(path: str | os.PathLike[str]) -> pathlib.Path:
  """`path` made absolute: against $MENTOR_DATA_ROOT if set, else the cwd."""
  path = pathlib.Path(path).expanduser()
  if not path.is_absolute():
    path = pathlib.Path(os.environ.get(DATA_ROOT_ENV) or '.') / path
  return path.absolute()


def load_for_config(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """Loads `config.data_npz`, building it from `config.data_source` if absent.

  Raises:
    FileNotFoundError: the file is missing and cannot be built; the message
      says how to get the data.
  """
  npz = resolve_data_path(config.data_npz)
  if not npz.exists():
    source = str(config.data_source)
    if source.startswith('synth:'):
      preset = source.split(':', 1)[1]
      if preset not in synthetic.PRESETS:
        raise ValueError(f'config.data_source={source!r}: unknown preset; '
                         f'expected one of {sorted(synthetic.PRESETS)}')
      with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / preset
        synthetic.generate(synthetic.PRESETS[preset], folder, seed=0)
        npz.parent.mkdir(parents=True, exist_ok=True)
        convert_lib.convert(folder, npz, name=preset)
    elif source:
      source = str(resolve_data_path(source))
      if not pathlib.Path(source).is_dir():
        raise FileNotFoundError(
            f'config.data_source={source!r} is not a folder; expected an '
            f'MMRec-format dataset folder.\n' + DOWNLOAD_HINT.format(npz=npz))
      npz.parent.mkdir(parents=True, exist_ok=True)
      convert_lib.convert(source, npz, name=config.dataset,
                          v_feat=config.v_feat_file,
                          t_feat=config.t_feat_file)
    else:
      raise FileNotFoundError(
          f'{npz} (config.data_npz) does not exist and config.data_source is '
          f'empty.\n' + DOWNLOAD_HINT.format(npz=npz))
  return data_lib.load_dataset(npz)

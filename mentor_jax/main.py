"""The command line of the trainer, and what every --config command shares.

  mentor-train --config configs/small.py --workdir runs/small
  python -m mentor_jax.train --config tiny:lightgcn --config.epochs=5

(`python -m mentor_jax.train` runs this module.) `--config` takes a path or
the name of a config shipped in `mentor_jax/configs/` (`small`, `small.py`,
`configs/small.py`), so commands work from any folder and with an installed
package; a `:ARG` suffix goes to the config's `get_config` (a dataset
config's ARG is the model: `configs/tiny.py:lightgcn`). `--config.KEY=VALUE`
overrides one setting, except `model`: a config holds the settings and
defaults of the model it was built for, so another model is refused with
the command that builds its config (`model_override_error`).
"""

from __future__ import annotations

import inspect
import pathlib
import runpy
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from mentor_jax import console
from mentor_jax import errors
from mentor_jax import train

FLAGS = flags.FLAGS
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / 'configs'


def shipped_config(name: str) -> pathlib.Path | None:
  """The shipped config file `name` refers to, or None.

  `name` may be `small`, `small.py` or `configs/small.py`; anything after a
  ':' (a config argument, e.g. `baseline.py:lightgcn,baby`) is not part of
  the name.
  """
  stem = pathlib.PurePath(name).name.removesuffix('.py')
  if not stem or stem.startswith('_'):
    return None
  path = CONFIG_DIR / f'{stem}.py'
  return path if path.is_file() else None


def _config_values(argv: Sequence[str]) -> list[tuple[int, str, str]]:
  """(index, prefix, value) of each --config argument in `argv`."""
  out = []
  for i, arg in enumerate(argv):
    if arg in ('--config', '-config') and i + 1 < len(argv):
      out.append((i + 1, '', argv[i + 1]))
    elif arg.startswith(('--config=', '-config=')):
      prefix, value = arg.split('=', 1)
      out.append((i, prefix + '=', value))
  return out


def resolve_config_arg(argv: Sequence[str]) -> list[str]:
  """`argv` with a `--config` that is not an existing file replaced by the
  shipped config of that name (the config argument after ':' is kept).

  An existing path always wins; a name that matches nothing is left as it
  is, so the flag's own error reports it.
  """
  out = list(argv)
  for j, prefix, value in _config_values(out):
    path, sep, config_arg = value.partition(':')
    if pathlib.Path(path).is_file():
      continue
    shipped = shipped_config(path)
    if shipped is not None:
      out[j] = prefix + str(shipped) + sep + config_arg
  return out


def model_override_error(config_filename: str, overrides: dict[str, Any],
                         argv: Sequence[str]) -> errors.ConfigError | None:
  """The error for `--config.model=X` on a config built for another model.

  Args:
    config_filename: the config flag's 'path[:arg]'.
    overrides: the `--config.KEY=VALUE` values given.
    argv: the command line as typed, for the command to use instead.

  Returns:
    None when the model is not overridden or is the one the config was
    built for.
  """
  if 'model' not in overrides:
    return None
  path, _, arg = config_filename.partition(':')
  module = runpy.run_path(path)
  get_config = module['get_config']
  built = get_config(*([arg] if arg else [])).model
  wanted = overrides['model']
  if wanted == built:
    return None
  # A config that takes the model as its argument (every dataset config,
  # base.py) is rebuilt with it; others say how (baseline.py) or not.
  if 'config_arg_for_model' in module:
    new_arg = module['config_arg_for_model'](arg, wanted)
  else:
    params = list(inspect.signature(get_config).parameters)
    new_arg = wanted if params[:1] == ['model'] else None
  head = (f'config.model={wanted!r}: {path} built this config for model '
          f'{built!r}, with its settings and defaults, which {wanted!r} '
          'does not share')
  if new_arg is None:
    return errors.ConfigError(
        f'{head}; {pathlib.Path(path).name} builds {built!r} configs only. '
        f'Use a dataset config with the model as its argument, e.g. '
        f'--config configs/small.py:{wanted}')
  command, skip = [], False
  for a in argv:  # The command without its --config.model.
    if not skip and a not in ('--config.model', '-config.model') and (
        not a.startswith(('--config.model=', '-config.model='))):
      command.append(a)
    skip = a in ('--config.model', '-config.model')
  for j, prefix, value in _config_values(command):
    command[j] = prefix + value.partition(':')[0] + ':' + new_arg
  typed = (' '.join([command_name(command[0]), shlex.join(command[1:])])
           if command else '')
  return errors.ConfigError(f'{head}. Build it for {wanted!r} instead:\n  '
                            + typed)


def command_name(argv0: str) -> str:
  """The program `argv0` started, as a user would type it again:
  `python -m mentor_jax.train` for a module of the package (argv[0] is then
  the module's file), `mentor-train` for a script found on the PATH."""
  path = pathlib.Path(argv0)
  if path.suffix == '.py':
    if path.resolve().parent == pathlib.Path(__file__).resolve().parent:
      return f'python -m mentor_jax.{path.stem}'
    return shlex.join(['python', argv0])
  found = shutil.which(path.name)
  if found and pathlib.Path(found).resolve() == path.resolve():
    return path.name
  return shlex.quote(argv0)


def run_config_command(main: Callable[[list[str]], Any]) -> None:
  """Runs an absl `main` that takes --config (required), --workdir and
  --debug, with plain log lines (`console.setup_logging`)."""
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py) or the name of '
      'a shipped one; ":ARG" is passed to its get_config.',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for logs and checkpoints.')
  flags.DEFINE_bool('debug', False, 'Show the traceback of an error.')
  flags.mark_flags_as_required(['config'])
  typed = list(sys.argv)

  def main_with_console(argv):
    console.setup_logging()
    console.quiet_orbax_logs()  # train and grid write checkpoints
    error = model_override_error(
        config_flags.get_config_filename(FLAGS['config']),
        config_flags.get_override_values(FLAGS['config']), typed)
    if error is not None:
      sys.exit(errors.run_cli(lambda: _raise(error), debug=FLAGS.debug))
    return main(argv)

  app.run(main_with_console, argv=resolve_config_arg(typed),
          flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with its failures as one `error:` line.

  A misspelt `--config.KEY` surfaces as ml_collections' KeyError or
  AttributeError (which already names the closest key), a value of the
  wrong type as absl's flags.Error; either exits with ConfigError's status.
  """
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError) as e:
    error = errors.ConfigError(flag_error_text(e))
    error.__cause__ = e  # --debug shows where it came from.
    sys.exit(errors.run_cli(lambda: _raise(error), debug='--debug' in argv))


def flag_error_text(exc: BaseException) -> str:
  """One line for a flag-parsing exception: its innermost message, with
  ml_collections' "Did you mean" kept."""
  while exc.args and isinstance(exc.args[0], BaseException):
    exc = exc.args[0]
  text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(
      exc)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(exc, (KeyError, AttributeError)) and lines:
    return (f'--config: this config has no setting {lines[0]}'
            + ''.join(f'. {line}' for line in lines[1:]))
  return '; '.join(lines)


def _raise(error: Exception) -> None:
  raise error


def main(argv):
  del argv
  config = FLAGS.config
  workdir = FLAGS.workdir or f'runs/{config.dataset}'

  def run() -> int:
    result = train.train_and_evaluate(config, workdir)
    if 'interrupted' in result:
      # The shell's convention for "ended by this signal" (130, 143), so
      # that `train && evaluate` does not go on as if training had finished.
      return 128 + signal.Signals[result['interrupted']].value
    return 0

  sys.exit(errors.run_cli(run, debug=FLAGS.debug))


def cli() -> None:
  """`mentor-train`, `python -m mentor_jax.train`, `python -m
  mentor_jax.main`."""
  run_config_command(main)


if __name__ == '__main__':
  cli()

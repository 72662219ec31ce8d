"""Top-K items per user from a checkpoint, training items excluded.

  python -m mentor_jax.recommend --workdir runs/small --users 0,5,7 --k 20 \
      --out recs.tsv
  python -m mentor_jax.recommend --workdir runs/small --users-file ids.txt \
      --k 10 --out recs.json

User and item ids are those of the dataset (the `.inter` file's userID and
itemID). The embeddings are the ones `evaluate` ranks (see its docstring).
Output: TSV `user, rank, item, score` (rank 1 = best) or JSON
`[{"user", "items", "scores"}]`; a user with fewer than K unseen items gets
only those.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

from mentor_jax import errors
from mentor_jax import evaluate as evaluate_lib
from mentor_jax import ranking
from mentor_jax import workdir as workdir_lib


def parse_users(spec: str, n_users: int) -> np.ndarray:
  """Ids from '0,5,7' (or one per line); clear errors for bad or unknown ids.

  Raises:
    ValueError: a token is not an integer, or an id is outside [0, n_users).
  """
  tokens = [t for t in spec.replace(',', ' ').split() if t]
  if not tokens:
    raise ValueError('no user ids given')
  bad = [t for t in tokens if not (t.lstrip('-').isascii()
                                   and t.lstrip('-').isdigit())]
  if bad:
    raise ValueError(f'user ids must be integers; got {bad[:5]}')
  users = [int(t) for t in tokens]  # Python ints: any length compares.
  out = sorted({u for u in users if not 0 <= u < n_users})
  if out:
    shown = [u if abs(u) < 10**12 else f'{str(u)[:12]}...' for u in out[:10]]
    raise ValueError(f'unknown user ids (this dataset has users 0..'
                     f'{n_users - 1}): {shown}')
  return np.asarray(users, np.int32)


def read_users_file(path: str) -> str:
  """The text of --users-file.

  Raises:
    ValueError: it cannot be read, or it is not UTF-8 text.
  """
  try:
    return pathlib.Path(path).read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'--users-file {path}: not UTF-8 text ({e.reason} at '
                     f'byte {e.start}); expected one user id per line') from e
  except OSError as e:
    raise ValueError(f'--users-file {path}: cannot be read '
                     f'({e.strerror or e})') from e


def check_out_path(path: str | None, overwrite: bool = False) -> None:
  """Refuses a --out that `write` cannot or must not write."""
  if path is None:
    return
  if not path.endswith(('.json', '.tsv')):
    raise errors.ConfigError(
        f'--out {path}: expected a .tsv or .json file name')
  workdir_lib.check_output(path, overwrite=overwrite)


def write(path: str | None, users: np.ndarray, items: np.ndarray,
          scores: np.ndarray, overwrite: bool = False) -> None:
  """TSV (stdout or *.tsv) or JSON (*.json), written atomically."""
  check_out_path(path, overwrite)
  records = [(int(u), [int(i) for i in its if i >= 0],
              [float(s) for i, s in zip(its, ss) if i >= 0])
             for u, its, ss in zip(users, items, scores)]
  if path and path.endswith('.json'):
    workdir_lib.write_output(path, json.dumps(
        [{'user': u, 'items': i, 'scores': s} for u, i, s in records],
        indent=1) + '\n', overwrite=overwrite)
    return
  lines = ['user\trank\titem\tscore']
  lines += [f'{u}\t{r + 1}\t{i}\t{s!r}' for u, its, ss in records
            for r, (i, s) in enumerate(zip(its, ss))]
  text = '\n'.join(lines) + '\n'
  if path:
    workdir_lib.write_output(path, text, overwrite=overwrite)
  else:
    sys.stdout.write(text)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  evaluate_lib.add_checkpoint_args(parser)
  who = parser.add_mutually_exclusive_group(required=True)
  who.add_argument('--users', help='comma-separated user ids, e.g. 0,5,7')
  who.add_argument('--users-file', help='a file with one user id per line')
  parser.add_argument('--k', type=int, default=20)
  parser.add_argument('--out', help='recs.tsv or recs.json (default: TSV on '
                      'stdout)')
  args = parser.parse_args(argv)
  if args.k < 1:
    parser.error(f'--k {args.k}: expected an integer >= 1')

  def run() -> int:
    check_out_path(args.out, args.overwrite)
    restored = evaluate_lib.load(evaluate_lib.checkpoint_path(args),
                                 data_npz=args.data_npz,
                                 with_scores=args.embeddings != 'recompute')
    try:
      spec = (args.users if args.users is not None
              else read_users_file(args.users_file))
      users = parse_users(spec, restored.dataset.n_users)
    except ValueError as e:
      parser.error(str(e))
    if args.k > restored.dataset.n_items:
      parser.error(f'--k {args.k}: expected at most {restored.dataset.n_items}'
                   ' (the items of this dataset)')
    (user_emb, item_emb), _ = evaluate_lib.embeddings(restored,
                                                      args.embeddings)
    # The ranking evaluate scores, training items left out.
    items, scores = ranking.top_k_items(
        user_emb, item_emb, users, *restored.dataset.split('train'),
        k=args.k, chunk_size=int(restored.config.eval_batch_size))
    write(args.out, users, items, scores, args.overwrite)
    return 0

  return errors.run_cli(run, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())

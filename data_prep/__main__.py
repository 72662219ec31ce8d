"""CLI: `python -m data_prep convert|synth ...` (see --help)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

from data_prep import convert as convert_lib
from data_prep import synthetic
from data_prep.format import DataError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m data_prep')
  sub = p.add_subparsers(dest='cmd', required=True)

  c = sub.add_parser('convert', help='MMRec folder -> .npz')
  c.add_argument('--src', required=True, help='MMRec dataset folder')
  c.add_argument('--out', required=True, help='output .npz')
  c.add_argument('--name', help='dataset name (default: folder name)')
  c.add_argument('--inter', help='.inter file in --src (default: NAME.inter)')
  c.add_argument('--v-feat', default='image_feat.npy')
  c.add_argument('--t-feat', default='text_feat.npy',
                 help='second modality, e.g. audio_feat.npy for TikTok')
  c.add_argument('--knn-k', type=int, default=40)
  c.add_argument('--synth-features', type=int, metavar='SEED',
                 help='generate seeded random features for missing files')
  c.add_argument('--synth-dims', type=int, nargs=2, metavar=('DV', 'DT'),
                 default=list(convert_lib.PAPER_DIMS))

  s = sub.add_parser('synth', help='seeded synthetic MMRec folder')
  s.add_argument('--preset', choices=sorted(synthetic.PRESETS),
                 default='tiny')
  s.add_argument('--out', required=True, help='output folder')
  s.add_argument('--name', help='dataset name (default: folder name)')
  s.add_argument('--seed', type=int, default=0)
  s.add_argument('--scale', type=float, default=1.0,
                 help='multiplies users and interactions')
  for f in ('users', 'items', 'interactions', 'dim-v', 'dim-t'):
    s.add_argument(f'--{f}', type=int, help='override the preset')
  s.add_argument('--npz', help='also convert the folder to this .npz')
  s.add_argument('--knn-k', type=int, default=40)
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
  path = synthetic.generate(shape, args.out, seed=args.seed, name=args.name)
  print(f'{path}: U={shape.n_users} I={shape.n_items} '
        f'interactions={shape.n_inter} d_v={shape.dim_v} d_t={shape.dim_t} '
        f'seed={args.seed} ({time.perf_counter() - t0:.1f} s)')
  if args.npz:
    _convert(argparse.Namespace(
        src=args.out, out=args.npz, name=args.name, inter=path.name,
        v_feat='image_feat.npy', t_feat='text_feat.npy', knn_k=args.knn_k,
        synth_features=None, synth_dims=list(convert_lib.PAPER_DIMS)))


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (2 on invalid data)."""
  args = _parser().parse_args(argv)
  try:
    if args.cmd == 'convert':
      _convert(args)
    else:
      _synth(args)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""New items served from their features: hide 10% of TikTok's items, then rank
them for the users who interacted with them.

  # 1. the data: a seeded 10% of items leaves the catalogue (all their rows)
  python bench/cold_items.py prepare --src ../shared/data/tiktok \
      --out /work/cold/tiktok90
  # 2. train any feature model on the rest, e.g. FREEDOM
  python -m mentor_jax.train --config configs/baseline.py:freedom,tiktok \
      --config.data_npz=/work/cold/tiktok90/tiktok90.npz \
      --config.data_source= --workdir /work/cold/freedom
  # 3. export it with the hidden items as new items, and measure
  mentor-export --workdir /work/cold/freedom \
      --new-items /work/cold/tiktok90/new_items.npz --out /work/cold/ex_freedom
  python bench/cold_items.py measure --prepared /work/cold/tiktok90 \
      --export /work/cold/ex_freedom --out docs/cold_items_freedom.json

`measure`: for every user with a row (train, valid or test) on a hidden
item, the hidden items are ranked by the export's vectors (the user's vector
against the new items' vectors), and Recall@20 / NDCG@20 over those users
compare with two rankings that need no model:
- random: the expectation over uniform random orders (exact: K / n_hidden
  for recall);
- popularity: the hidden items ordered by how many OTHER users interacted
  with them (the user's own rows are taken out of the counts, so no user's
  answer is in its own ranking). Real cold items have no such counts: this
  is an optimistic reference, not a deployable one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top
from data_prep import convert
from mentor_jax import metrics
from mentor_jax.serving import export as export_lib
from mentor_jax.serving import index as index_lib

K = 20


def prepare(src: pathlib.Path, out: pathlib.Path, fraction: float,
            seed: int) -> None:
  """Writes <out>/{tiktok90.inter, features, tiktok90.npz, hidden.json,
  new_items.npz}: the catalogue without the hidden items, re-indexed."""
  import pandas as pd
  out.mkdir(parents=True, exist_ok=False)
  df = pd.read_csv(src / 'tiktok.inter', sep='\t')
  n_items = int(df.itemID.max()) + 1
  rng = np.random.default_rng(seed)
  hidden = np.sort(rng.choice(n_items, size=round(fraction * n_items),
                              replace=False))
  kept = np.setdiff1d(np.arange(n_items), hidden)
  new_id = np.full(n_items, -1)
  new_id[kept] = np.arange(kept.size)
  warm = df[~df.itemID.isin(hidden)].copy()
  warm['itemID'] = new_id[warm.itemID]
  warm.to_csv(out / 'tiktok90.inter', sep='\t', index=False)
  image, audio = np.load(src / 'image_feat.npy'), np.load(src / 'audio_feat.npy')
  np.save(out / 'image_feat.npy', image[kept])
  np.save(out / 'audio_feat.npy', audio[kept])
  np.savez(out / 'new_items.npz', feat_v=image[hidden], feat_t=audio[hidden],
           ids=np.array([f'hidden:{i}' for i in hidden]))
  cold_rows = df[df.itemID.isin(hidden)]
  (out / 'hidden.json').write_text(json.dumps({
      'seed': seed, 'fraction': fraction, 'hidden_items': hidden.tolist(),
      # user -> hidden source items they interacted with (any split)
      'truth': {str(u): sorted(set(g.itemID.tolist()))
                for u, g in cold_rows.groupby('userID')}}) + '\n')
  convert.convert(out, out / 'tiktok90.npz', name='tiktok90',
                  v_feat='image_feat.npy', t_feat='audio_feat.npy')
  print(f'{out}: {kept.size} items kept, {hidden.size} hidden; '
        f'{len(cold_rows)} rows of {cold_rows.userID.nunique()} users on '
        'hidden items set aside')


def ranking_metrics(ranked: np.ndarray, truth: list[set[int]]
                    ) -> tuple[float, float]:
  """Mean Recall@K and NDCG@K of ranked [n, K] item ids (metrics.py's)."""
  hits = np.stack([np.isin(row, list(t)) for row, t in zip(ranked, truth)])
  per_user = metrics.topk_metrics(hits, np.array([len(t) for t in truth]),
                                  ks=(K,))
  return (float(per_user[f'recall@{K}'].mean()),
          float(per_user[f'ndcg@{K}'].mean()))


def measure(prepared: pathlib.Path, export_dir: pathlib.Path) -> dict:
  info = json.loads((prepared / 'hidden.json').read_text())
  ex = export_lib.load(export_dir)
  hidden = np.asarray(info['hidden_items'])
  n_new = ex.manifest['n_new_items']
  if n_new != hidden.size:
    raise SystemExit(f'{export_dir} holds {n_new} new items; expected '
                     f'{hidden.size} (export with --new-items '
                     f'{prepared}/new_items.npz)')
  # Positions of the hidden items among the new rows (source ids hidden:ID).
  new_ids = ex.item_ids[-n_new:]
  position = {int(s.split(':')[1]): j for j, s in enumerate(new_ids)}
  row_of_user = {u: r for r, u in enumerate(ex.user_ids.tolist())}
  users = [u for u in info['truth'] if u in row_of_user]
  truth = [{position[i] for i in info['truth'][u]} for u in users]
  queries = ex.user_emb[[row_of_user[u] for u in users]]
  new_vectors = ex.item_emb[-n_new:]
  model_ids, _ = index_lib.ExactIndex(new_vectors).search(
      queries, K, [np.zeros(0, np.int32)] * len(users))
  counts = np.zeros(n_new)
  for t in truth:
    counts[list(t)] += 1
  popular = []
  for t in truth:  # the others' counts: this user's own rows taken out
    own = np.zeros(n_new)
    own[list(t)] = 1
    popular.append(np.argsort(-(counts - own), kind='stable')[:K])
  model = ranking_metrics(model_ids, truth)
  pop = ranking_metrics(np.asarray(popular), truth)
  rng = np.random.default_rng(0)
  shuffled = ranking_metrics(
      np.stack([rng.permutation(n_new)[:K] for _ in truth]), truth)
  return {
      'export': str(export_dir), 'model': ex.manifest['display_name'],
      'epoch': ex.manifest['epoch'],
      'warm_test_metrics': ex.manifest['metrics'].get('test', {}),
      'n_hidden_items': int(n_new), 'n_users': len(users),
      'n_rows': int(sum(len(t) for t in truth)),
      f'model_recall@{K}': model[0], f'model_ndcg@{K}': model[1],
      f'popularity_recall@{K}': pop[0], f'popularity_ndcg@{K}': pop[1],
      f'random_expected_recall@{K}': K / n_new,
      f'random_draw_recall@{K}': shuffled[0],
      f'random_draw_ndcg@{K}': shuffled[1],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('prepare')
  p.add_argument('--src', type=pathlib.Path, required=True)
  p.add_argument('--out', type=pathlib.Path, required=True)
  p.add_argument('--fraction', type=float, default=0.1)
  p.add_argument('--seed', type=int, default=0)
  m = sub.add_parser('measure')
  m.add_argument('--prepared', type=pathlib.Path, required=True)
  m.add_argument('--export', type=pathlib.Path, required=True)
  m.add_argument('--out', type=pathlib.Path)
  args = parser.parse_args()
  if args.command == 'prepare':
    prepare(args.src, args.out, args.fraction, args.seed)
    return
  result = measure(args.prepared, args.export)
  text = json.dumps(result, indent=2) + '\n'
  print(text, end='')
  if args.out:
    if args.out.exists():
      raise SystemExit(f'{args.out} exists; choose another --out')
    args.out.write_text(text)


if __name__ == '__main__':
  main()

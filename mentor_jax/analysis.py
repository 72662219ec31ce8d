"""Alignment analysis of RQ3 (paper Fig. 4): modality distances and t-SNE.

  python -m mentor_jax.analysis --workdir runs/tiktok --n-items 500 --seed 0 \
      --png fig4.png

From a trained model (the workdir of `mentor_jax.train`: its config.json and
checkpoint), samples items and reports the average distance between their
visual and textual representations, then draws the t-SNE picture of Fig. 4
(visual green, textual blue, ID orange).

Distance definition (the paper does not give one; its numbers are 0.44 for
MENTOR_base and 0.18 for MENTOR on Baby): for each sampled item i, the
Euclidean distance between its L2-normalized visual and textual item
embeddings, averaged over the sampled items:

  d(V, T) = mean_i || v_i / ||v_i|| - t_i / ||t_i|| ||_2,   in [0, 2].

The item embeddings are the 64-d outputs of the v and t encoders after the
user-item propagation and the item-item graph (E-bar_i of Eq. 7, before the
fusion weights), from a clean forward pass.

t-SNE needs the optional extra: pip install -e .[analysis]
(scikit-learn, matplotlib).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from mentor_jax import data as data_lib
from mentor_jax import datasets
from mentor_jax import epoch as epoch_lib
from mentor_jax.models.mentor import model as model_lib
from mentor_jax.models.mentor import objective

# Fig. 4's colours: visual green, textual blue, ID orange.
COLORS = {'visual': 'tab:green', 'textual': 'tab:blue', 'id': 'tab:orange'}


def modality_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Mean Euclidean distance between the L2-normalized rows of a and b.

  Args:
    a: [n, d] one modality's embeddings of n items.
    b: [n, d] another modality's embeddings of the same items (row-paired).

  Returns:
    mean_i ||a_i/|a_i| - b_i/|b_i|||, a float in [0, 2].
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f'expected two [n, d] arrays, got {a.shape}, {b.shape}')
  na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return float(np.mean(np.linalg.norm(na - nb, axis=1)))


def item_modalities(model: model_lib.Mentor, data: data_lib.DeviceData,
                    hp: objective.Hparams) -> dict[str, np.ndarray]:
  """{'visual', 'textual', 'id'}: [I, 64] item embeddings, clean pass."""
  emb = objective.run_forward(model, data, jax.random.PRNGKey(0), hp,
                              perturbed=False)
  items = np.asarray(emb.items)
  return {'visual': items[:, 0], 'textual': items[:, 1], 'id': items[:, 2]}


def analyze(modalities: dict[str, np.ndarray], n_items: int,
            seed: int) -> dict[str, Any]:
  """Samples items and reports the pairwise modality distances.

  Args:
    modalities: output of `item_modalities`.
    n_items: how many items to sample (without replacement; all if fewer).
    seed: numpy seed of the sample.

  Returns:
    {'items': sampled ids, 'distance': {'visual-textual', 'visual-id',
    'textual-id'}, 'definition': str}.
  """
  total = modalities['visual'].shape[0]
  rng = np.random.default_rng(seed)
  items = np.sort(rng.choice(total, size=min(n_items, total), replace=False))
  m = {k: v[items] for k, v in modalities.items()}
  return {
      'items': items,
      'distance': {
          'visual-textual': modality_distance(m['visual'], m['textual']),
          'visual-id': modality_distance(m['visual'], m['id']),
          'textual-id': modality_distance(m['textual'], m['id']),
      },
      'definition': ('mean over sampled items of the Euclidean distance '
                     'between L2-normalized item embeddings'),
  }


def tsne_png(modalities: dict[str, np.ndarray], items: np.ndarray,
             path: str | pathlib.Path, seed: int, title: str = '') -> None:
  """Fig. 4: one joint 2-d t-SNE of the three modalities of `items`."""
  # Optional dependencies: only this function needs them.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top

  names = ('visual', 'textual', 'id')
  # Normalized rows, as for the distance: t-SNE then shows directions, the
  # quantity the distance measures.
  x = np.concatenate([modalities[n][items] for n in names])
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
  xy = TSNE(n_components=2, perplexity=perplexity, init='pca',
            random_state=seed).fit_transform(x)
  n = len(items)
  fig, ax = plt.subplots(figsize=(5, 5))
  for j, name in enumerate(names):
    pts = xy[j * n:(j + 1) * n]
    ax.scatter(pts[:, 0], pts[:, 1], s=6, c=COLORS[name], label=name)
  ax.legend(markerscale=3)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def load_trained(workdir: str | pathlib.Path, checkpoint: str | None = None,
                 allow_untrained: bool = False):
  """(model, data, hp, config) of a training run.

  Restores the best checkpoint of `workdir` (or the step/manager directory
  `checkpoint`) with `mentor_jax.evaluate.load`, which rebuilds the model
  from the config saved in the checkpoint. With `allow_untrained` and no
  checkpoint, the model is built from `<workdir>/config.json` and keeps its
  initial parameters (smoke tests only).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mentor_jax import evaluate  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  try:
    restored = evaluate.load(checkpoint or workdir, with_scores=False)
  except FileNotFoundError:
    if not allow_untrained:
      raise
    config = ml_collections.ConfigDict(
        json.loads((workdir / 'config.json').read_text()))
    dataset = datasets.load_for_config(config)
    model = objective.create_model(config, dataset)
  else:
    config, dataset = restored.config, restored.dataset
    model = nnx.merge(restored.graphdef, restored.params, restored.rest)
  # The training run's static settings (kernel resolved per backend).
  hp = epoch_lib.make_hparams(objective.MENTOR, config, dataset)
  data = data_lib.to_device(dataset, config.knn_k)
  return model, data, hp, config


def main(argv: list[str] | None = None) -> dict[str, Any]:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--checkpoint', default=None,
                      help='checkpoint path (default: best of --workdir)')
  parser.add_argument('--n-items', type=int, default=500)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--png', default=None, help='t-SNE figure to write')
  parser.add_argument('--allow-untrained', action='store_true',
                      help='use the initial parameters if none restore')
  args = parser.parse_args(argv)
  model, data, hp, config = load_trained(args.workdir, args.checkpoint,
                                         args.allow_untrained)
  mods = item_modalities(model, data, hp)
  report = analyze(mods, args.n_items, args.seed)
  for pair, d in report['distance'].items():
    print(f'{pair:16s} {d:.4f}')
  print(f"({report['definition']}; {len(report['items'])} items)")
  if args.png:
    tsne_png(mods, report['items'], args.png, args.seed,
             title=str(config.get('variant', config.get('model', ''))))
    print(f'wrote {args.png}')
  return report


if __name__ == '__main__':
  main()

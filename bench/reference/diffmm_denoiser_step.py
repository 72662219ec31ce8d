"""The OFFICIAL DiffMM denoiser on given arrays (torch interpreter).

  REF_PYTHON bench/reference/diffmm_denoiser_step.py --src DIFFMM_ROOT \
      IN.npz OUT.npz

IN.npz holds the denoiser's weights (ours: [in, out]), a batch of clean
rows x0, the item table and projected features, and the randomness ours
drew (t, noise, the dropout's keep mask). The official `Denoise` and
`GaussianDiffusion` (Model.py, imported from --src, unmodified) compute
`training_losses` with exactly that randomness (torch.randint and
torch.randn_like answer with the given t and noise; the dropout module
applies the given mask), the phase's loss diff.mean() + e_loss gc.mean(),
one step of its torch Adam, and `p_sample(steps=0)` before and after the
step. OUT.npz: the per-row losses, the stepped weights, the reverse passes.
tests/test_official_reference.py runs ours on the same arrays.
"""

import argparse
import os
import sys

import numpy as np

MAP = (('emb_layer', 'emb'), ('in_layers.0', 'in'), ('out_layers.0', 'out'))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--src', required=True)
  p.add_argument('inp')
  p.add_argument('out')
  args = p.parse_args()
  a = dict(np.load(args.inp))
  sys.argv = ['Main.py', '--data', 'baby', '--steps', str(int(a['steps']))]
  sys.dont_write_bytecode = True
  sys.path.insert(0, os.path.abspath(args.src))
  import torch  # pylint: disable=g-import-not-at-top
  from bench.reference import torch_shims  # pylint: disable=g-import-not-at-top
  torch_shims.make_cuda_a_noop()
  import Model  # pylint: disable=g-import-not-at-top,import-error
  n_items, hidden = a['in_w'].shape[0] - a['emb_w'].shape[0], a['in_w'].shape[1]
  den = Model.Denoise([n_items, hidden], [hidden, n_items],
                      int(a['emb_w'].shape[0]))
  with torch.no_grad():
    for tname, ours in MAP:
      layer = den.get_submodule(tname)
      layer.weight.copy_(torch.tensor(a[f'{ours}_w'].T))
      layer.bias.copy_(torch.tensor(a[f'{ours}_b']))
  keep = torch.tensor(a['keep'])

  class GivenMask(torch.nn.Module):
    def forward(self, x):
      return torch.where(keep, x / 0.5, torch.zeros_like(x))
  den.drop = GivenMask()
  diff = Model.GaussianDiffusion(float(a['noise_scale']), float(a['noise_min']),
                                 float(a['noise_max']), int(a['steps']))
  x0 = torch.tensor(a['x0'])
  given_t, given_noise = torch.tensor(a['t']), torch.tensor(a['noise'])
  torch.randint = lambda *args_, **kw: given_t
  torch.randn_like = lambda x: given_noise
  out = {'reverse_before': diff.p_sample(den, x0, 0, False).detach().numpy()}
  opt = torch.optim.Adam(den.parameters(), lr=float(a['lr']), weight_decay=0)
  d_loss, gc_loss = diff.training_losses(den, x0, torch.tensor(a['item_emb']),
                                         None, torch.tensor(a['feats']))
  loss = d_loss.mean() + gc_loss.mean() * float(a['e_loss'])
  opt.zero_grad()
  loss.backward()
  opt.step()
  out.update(diff_loss=d_loss.detach().numpy(),
             gc_loss=gc_loss.detach().numpy(),
             reverse_after=diff.p_sample(den, x0, 0, False).detach().numpy())
  for tname, ours in MAP:
    layer = den.get_submodule(tname)
    out[f'{ours}_w'] = layer.weight.detach().numpy().T
    out[f'{ours}_b'] = layer.bias.detach().numpy()
  np.savez(args.out, **out)


if __name__ == '__main__':
  main()

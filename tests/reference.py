"""Plain NumPy references for the mask tests (no TensorFlow: also used under KERAS_BACKEND=jax)."""

import numpy as np


def reference_cutmix_kappa(n, size, rng):
  """Plain NumPy transcription of the reference box procedure (docs/method.md §3.2 steps 1-5)."""
  lam = rng.beta(2.0, 2.0, n)
  cut = np.floor(size * np.sqrt(lam)).astype(int)
  u = rng.integers(0, size, n)
  v = rng.integers(0, size, n)
  u1, u2 = np.clip(u - cut // 2, 0, size), np.clip(u + cut // 2, 0, size)
  v1, v2 = np.clip(v - cut // 2, 0, size), np.clip(v + cut // 2, 0, size)
  return (u2 - u1) * (v2 - v1) / size**2


def is_rectangle(mask):
  """True if the ones of a 2-D {0,1} array form one axis-aligned rectangle (or nothing)."""
  rows, cols = np.nonzero(mask)
  if rows.size == 0:
    return True
  box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  return bool(box.all()) and box.sum() == mask.sum()

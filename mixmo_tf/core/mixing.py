"""Mixing block of MixMo (Ramé et al., ICCV 2021, Sec. 3): mask samplers and `MixingLayer`.

Sampling is split from applying (as Keras' CutMix/MixUp do): `sample_masks` draws per-example
masks and their realised ratios with `keras.ops` on stateless seeds (`mixmo_tf.core.rng`), so one copy
serves every Keras backend and traces in `tf.function` and `jax.jit`; `MixingLayer` applies them
to the M stem feature maps. Masks live on the stems' output grid (docs/method.md §12.1).

Shapes use NHWC: masks are float32 [B, M, H, W, 1], kappa is float32 [B, M].
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict

import keras
import numpy as np
from keras import ops

from mixmo_tf.core import rng

# A patch sampler draws, per example, the binary (or soft) mask of the member that is "patched"
# (member 0 before the role shuffle). Signature: (seed [2], kappa0 [B], H, W) -> float32 [B, H, W].
PatchSampler = Callable[[Any, Any, int, int], Any]
PATCH_SAMPLERS: Dict[str, PatchSampler] = {}

# Methods without a patch: "linear" (kappa ~ Dir(alpha)) and "mimo" (kappa fixed at 1/M).
LINEAR_METHODS = ("linear", "mimo")


def register_patch_sampler(name: str):
  """Registers a patch-mask sampler under `name` (a `--mixing` choice)."""

  def decorator(fn: PatchSampler) -> PatchSampler:
    if name in PATCH_SAMPLERS or name in LINEAR_METHODS:
      raise ValueError(f"Mixing method {name!r} is already registered.")
    PATCH_SAMPLERS[name] = fn
    return fn

  return decorator


def mixing_methods() -> tuple:
  """All valid `method` names for `sample_masks`."""
  return LINEAR_METHODS + tuple(sorted(PATCH_SAMPLERS))


def sample_kappa(batch_size, num_members: int, alpha: float, seed):
  """kappa ~ Dirichlet(alpha * 1_M) per example, float32 [B, M] (Beta(alpha, alpha) for M = 2);
  docs/method.md §3.2 step 1 and §3.4."""
  if num_members == 1:
    return ops.ones([batch_size, 1], "float32")
  return rng.dirichlet([batch_size], seed, alpha, num_members)


@register_patch_sampler("cutmix")
def cutmix_box(seed, kappa0, height: int, width: int):
  """Binary box masks of area ratio ~kappa0, the reference procedure (docs/method.md §3.2, Eq. 2).

  Sides floor(S * sqrt(kappa)), integer centre uniform on the grid, corners centre -/+ floor(side/2)
  clipped to the grid (half-open), so odd sides lose one pixel and border boxes are truncated.
  """
  batch = ops.shape(kappa0)[0]
  seed_u, seed_v = rng.split_list(seed, 2)
  sqrt_k = ops.sqrt(ops.clip(ops.cast(kappa0, "float32"), 0.0, 1.0))
  half_h = ops.cast(ops.floor(height * sqrt_k), "int32") // 2
  half_w = ops.cast(ops.floor(width * sqrt_k), "int32") // 2
  u = rng.uniform([batch], seed_u, 0, height, dtype="int32")
  v = rng.uniform([batch], seed_v, 0, width, dtype="int32")
  u1, u2 = ops.clip(u - half_h, 0, height), ops.clip(u + half_h, 0, height)
  v1, v2 = ops.clip(v - half_w, 0, width), ops.clip(v + half_w, 0, width)
  rows = ops.arange(height, dtype="int32")[None, :]
  cols = ops.arange(width, dtype="int32")[None, :]
  in_rows = ops.logical_and(rows >= u1[:, None], rows < u2[:, None])  # [B, H]
  in_cols = ops.logical_and(cols >= v1[:, None], cols < v2[:, None])  # [B, W]
  return ops.cast(ops.logical_and(in_rows[:, :, None], in_cols[:, None, :]), "float32")


def _concat_mask(seed, kappa0, length: int, other: int, axis: int):
  """Ones on the first floor(kappa * S) cells of one axis, or (per example, probability 1/2) on
  its last floor((1 - kappa) * S) cells (docs/method.md §3.3)."""
  batch = ops.shape(kappa0)[0]
  kappa0 = ops.cast(kappa0, "float32")
  positions = ops.arange(length, dtype="float32")[None, :]
  head = positions < ops.floor(kappa0 * length)[:, None]
  tail = positions >= (length - ops.floor((1.0 - kappa0) * length))[:, None]
  flip = rng.uniform([batch], seed) < 0.5
  line = ops.cast(ops.where(flip[:, None], tail, head), "float32")  # [B, S]
  line = line[:, :, None] if axis == 1 else line[:, None, :]
  shape = (batch, length, other) if axis == 1 else (batch, other, length)
  return ops.broadcast_to(line, shape)


@register_patch_sampler("hconcat")
def horizontal_concat(seed, kappa0, height: int, width: int):
  """Horizontal concatenation (Table 2; docs/method.md §3.3): split the H axis, top / bottom."""
  return _concat_mask(seed, kappa0, height, width, axis=1)


@register_patch_sampler("vconcat")
def vertical_concat(seed, kappa0, height: int, width: int):
  """Vertical concatenation (Table 2; docs/method.md §3.3): split the W axis, left / right."""
  return _concat_mask(seed, kappa0, width, height, axis=2)


PATCHUP_BLOCK = 7


@register_patch_sampler("patchup")
def patchup_2d(seed, kappa0, height: int, width: int):
  """PatchUp 2D, hard (Table 2): Bernoulli(gamma) block centres dilated by a 7x7 max-pool.

  gamma = kappa * W^2 / (7^2 (W - 7 + 1)^2), the reference's DropBlock-style rate
  (docs/method.md §3.3); the block shrinks to the grid on grids smaller than 7.
  """
  block = min(PATCHUP_BLOCK, height, width)
  gamma = ops.cast(kappa0, "float32") * width**2 / (block**2 * (width - block + 1)**2)
  batch = ops.shape(kappa0)[0]
  centres = rng.uniform([batch, height, width], seed) < gamma[:, None, None]
  blocks = ops.max_pool(ops.cast(centres, "float32")[..., None], block, strides=1,
                        padding="same", data_format="channels_last")
  return blocks[..., 0]


COWMASK_SIGMA_RANGE = (4.0, 16.0)
COWMASK_PROPORTION_RANGE = (0.2, 0.8)


@register_patch_sampler("cowmask")
def cow_mask(seed, kappa0, height: int, width: int):
  """CowMask (Table 2; docs/method.md §3.3): thresholded Gaussian-blurred noise. kappa0 is ignored.

  Proportion pi ~ U(0.2, 0.8), sigma log-uniform in [4, 16], a 97-tap separable Gaussian (each 1-D
  factor normalised by sqrt(2 pi sigma^2)) over N(0, 1) noise with zero padding; ones where the
  blurred noise <= mean + sqrt(2) erfinv(2 pi - 1) std.
  """
  batch = ops.shape(kappa0)[0]
  seed_p, seed_s, seed_n = rng.split_list(seed, 3)
  proportion = rng.uniform([batch], seed_p, *COWMASK_PROPORTION_RANGE)
  log_lo, log_hi = math.log(COWMASK_SIGMA_RANGE[0]), math.log(COWMASK_SIGMA_RANGE[1])
  sigma = ops.exp(rng.uniform([batch], seed_s, log_lo, log_hi))
  radius = int(np.ceil(3 * COWMASK_SIGMA_RANGE[1]))  # 48 -> 97 taps
  taps = ops.arange(-radius, radius + 1, dtype="float32")[:, None]  # [97, 1]
  kernel = ops.exp(-0.5 * ops.square(taps / sigma)) / ops.sqrt(2 * math.pi * ops.square(sigma))
  noise = rng.normal([1, height, width, batch], seed_n)  # examples as channels; kernel [97, B]
  conv = lambda x, k: ops.depthwise_conv(x, k, strides=1, padding="same",
                                         data_format="channels_last")
  blurred = conv(conv(noise, kernel[:, None, :, None]), kernel[None, :, :, None])
  blurred = ops.transpose(blurred[0], [2, 0, 1])  # [B, H, W]
  mean, var = ops.moments(blurred, axes=[1, 2])
  threshold = mean + math.sqrt(2.0) * ops.erfinv(2 * proportion - 1) * ops.sqrt(var)
  return ops.cast(blurred <= threshold[:, None, None], "float32")


FMIX_DECAY_POWER = 3.0


@register_patch_sampler("fmix")
def fmix(seed, kappa0, height: int, width: int):
  """FMix (Table 2): the top round(kappa * HW) cells of a low-pass Fourier-space random field.

  Decay power 3, the FMix paper's default (the reference code has no FMix: docs/method.md §3.3).
  """
  batch = ops.shape(kappa0)[0]
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.fftfreq(width)[None, :]
  freq = np.sqrt(fx**2 + fy**2)
  scale = (1.0 / np.maximum(freq, 1.0 / max(height, width))**FMIX_DECAY_POWER).astype(np.float32)
  seed_re, seed_im = rng.split_list(seed, 2)
  scale = ops.convert_to_tensor(scale)
  real = rng.normal([batch, height, width], seed_re) * scale
  imag = rng.normal([batch, height, width], seed_im) * scale
  field, _ = ops.ifft2((real, imag))
  flat = ops.reshape(field, (batch, height * width))
  num_ones = ops.cast(ops.round(ops.cast(kappa0, "float32") * (height * width)), "int32")
  ranks = ops.argsort(ops.argsort(-flat, axis=1), axis=1)  # 0 for the largest value
  return ops.reshape(ops.cast(ranks < num_ones[:, None], "float32"), (batch, height, width))


def _linear_masks(kappa, height: int, width: int):
  """Constant masks m_i = kappa_i, [B, M, H, W, 1] (docs/method.md §3.1, §3.4)."""
  batch, num_members = ops.shape(kappa)
  return ops.broadcast_to(kappa[:, :, None, None, None], (batch, num_members, height, width, 1))


def _patch_masks(patch, kappa):
  """Member 0 takes `patch`; members j >= 1 share the complement in proportion kappa_j
  (docs/method.md §3.4)."""
  num_members = kappa.shape[1]
  rest = kappa[:, 1:]
  total = ops.sum(rest, axis=1, keepdims=True)
  # Normalise by the exact total, however small (a Dirichlet with a small alpha gives members
  # ratios far below 1e-12); only an all-zero complement falls back to equal shares.
  positive = total > 0
  share = ops.where(positive, rest / ops.where(positive, total, 1.0), 1.0 / (num_members - 1))
  patch = patch[:, None, :, :, None]  # [B, 1, H, W, 1]
  others = (1.0 - patch) * share[:, :, None, None, None]
  return ops.concatenate([patch, others], axis=1)


def sample_masks(batch_size, height: int, width: int, num_members: int, method: str = "linear",
                 alpha: float = 2.0, patch_probability=0.5, seed=0, batch_seed=None):
  """Samples MixMo masks and realised ratios for one batch (docs/method.md §3.2-§3.4).

  Args:
    batch_size: B (int or scalar tensor).
    height, width: the stems' output grid (32x32 on CIFAR and on Tiny ImageNet).
    num_members: M >= 1.
    method: "linear" (constant masks kappa_i, kappa ~ Dir(alpha)), "mimo" (kappa = 1/M), or a
      registered patch sampler such as "cutmix" (binary masks, Eq. 2).
    alpha: Dirichlet / Beta concentration.
    patch_probability: p. Patch methods use the patch mask with probability p and the linear mask
      otherwise, drawn once per batch as in the reference (docs/method.md §3.2 step 7, Sec. 4).
    seed: int or [2] integer tensor; the result is a pure function of it (and of batch_seed).
    batch_seed: optional seed of the per-batch draws (cut-vs-linear, role shuffle). Under data
      parallelism pass one shared by all replicas, so that the whole global batch takes one
      decision (docs/method.md §3.2 step 7) while per-example draws differ per replica.

  Returns:
    masks: float32 [B, M, H, W, 1], summing to 1 over M at every pixel.
    kappa: float32 [B, M], each member's mask mean (the ratio actually realised, Sec. 3.2).
  """
  if method not in mixing_methods():
    raise ValueError(f"Unknown mixing method {method!r}; expected one of {mixing_methods()}.")
  if num_members < 1:
    raise ValueError(f"num_members must be >= 1, got {num_members}.")
  if num_members == 1:
    return ops.ones([batch_size, 1, height, width, 1], "float32"), ops.ones([batch_size, 1])
  seed_kappa, seed_patch, seed_coin, seed_perm = rng.split_list(seed, 4)
  if batch_seed is not None:
    seed_coin, seed_perm = rng.split_list(batch_seed, 2)
  if method == "mimo":
    kappa = ops.full([batch_size, num_members], 1.0 / num_members, "float32")
    return _linear_masks(kappa, height, width), kappa
  kappa = sample_kappa(batch_size, num_members, alpha, seed_kappa)
  masks = _linear_masks(kappa, height, width)
  if method == "linear":
    return masks, kappa
  patch = PATCH_SAMPLERS[method](seed_patch, kappa[:, 0], height, width)
  use_patch = rng.uniform([], seed_coin) < ops.cast(patch_probability, "float32")
  masks = ops.where(use_patch, _patch_masks(patch, kappa), masks)
  # Role shuffle, once per batch: the patched member is a random one (docs/method.md §3.2 step 6).
  perm = ops.argsort(rng.uniform([num_members], seed_perm))
  masks = ops.take(masks, perm, axis=1)
  return masks, ops.mean(masks, axis=[2, 3, 4])


@keras.saving.register_keras_serializable(package="mixmo_tf")
class MixingLayer(keras.layers.Layer):
  """MixMo mixing block M(l_0..l_{M-1}) (Sec. 3.1).

  Training (masks given): M * sum_i mask_i * l_i. Inference (masks None): sum_i l_i, which is what
  the training form gives for constant masks 1/M, so train and test activations share a scale.
  Masks [B, M, H, W, 1] broadcast over channels and are cast to the features' dtype.
  """

  def call(self, features, masks=None):
    features = list(features)
    if masks is None:
      return sum(features[1:], features[0])
    # The factor M goes on the one-channel masks, and a running sum replaces a stacked
    # [B, M, H, W, C] tensor: two fewer full-size passes in the hot path.
    masks = keras.ops.cast(masks * len(features), features[0].dtype)
    mixed = masks[:, 0] * features[0]
    for i in range(1, len(features)):
      mixed = mixed + masks[:, i] * features[i]
    return mixed

  def compute_output_shape(self, features_shape, masks_shape=None):
    return features_shape[0]

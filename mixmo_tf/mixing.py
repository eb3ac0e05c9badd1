"""Mixing block of MixMo (Ramé et al., ICCV 2021, Sec. 3): mask samplers and `MixingLayer`.

Sampling is split from applying (as Keras' CutMix/MixUp do): `sample_masks` draws per-example
masks and their realised ratios with pure, stateless TF ops; `MixingLayer` applies them to the M
stem feature maps. Masks live on the stems' output grid (docs/method.md §12.1).

Shapes use NHWC: masks are float32 [B, M, H, W, 1], kappa is float32 [B, M].
"""

from __future__ import annotations

from typing import Callable, Dict

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# A patch sampler draws, per example, the binary (or soft) mask of the member that is "patched"
# (member 0 before the role shuffle). Signature: (seed [2] int32, kappa0 [B], H, W) -> [B, H, W].
PatchSampler = Callable[[tf.Tensor, tf.Tensor, int, int], tf.Tensor]
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


def _split(seed, num):
  return tf.unstack(tf.random.experimental.stateless_split(seed, num), axis=0)


def _as_seed(seed) -> tf.Tensor:
  """Accepts an int or a [2] integer tensor; returns a [2] int32 stateless seed."""
  if isinstance(seed, int):
    return tf.constant([seed, 0], tf.int32)
  return tf.cast(tf.convert_to_tensor(seed), tf.int32)


def sample_kappa(batch_size, num_members: int, alpha: float, seed) -> tf.Tensor:
  """kappa ~ Dirichlet(alpha * 1_M) per example, [B, M] (Beta(alpha, alpha) for M = 2), Sec. 3.4."""
  if num_members == 1:
    return tf.ones([batch_size, 1], tf.float32)
  dist = tfd.Dirichlet(tf.fill([num_members], tf.cast(alpha, tf.float32)))
  return tf.cast(dist.sample(batch_size, seed=_as_seed(seed)), tf.float32)


@register_patch_sampler("cutmix")
def cutmix_box(seed, kappa0, height: int, width: int) -> tf.Tensor:
  """Binary box masks of area ratio ~kappa0, the reference procedure (docs/method.md §3.2, Eq. 2).

  Sides floor(S * sqrt(kappa)), integer centre uniform on the grid, corners centre -/+ floor(side/2)
  clipped to the grid (half-open), so odd sides lose one pixel and border boxes are truncated.
  """
  batch = tf.shape(kappa0)[0]
  seed_u, seed_v = _split(seed, 2)
  sqrt_k = tf.sqrt(tf.clip_by_value(kappa0, 0.0, 1.0))
  cut_h = tf.cast(tf.floor(height * sqrt_k), tf.int32)
  cut_w = tf.cast(tf.floor(width * sqrt_k), tf.int32)
  u = tf.random.stateless_uniform([batch], seed_u, 0, height, dtype=tf.int32)
  v = tf.random.stateless_uniform([batch], seed_v, 0, width, dtype=tf.int32)
  u1 = tf.clip_by_value(u - cut_h // 2, 0, height)
  u2 = tf.clip_by_value(u + cut_h // 2, 0, height)
  v1 = tf.clip_by_value(v - cut_w // 2, 0, width)
  v2 = tf.clip_by_value(v + cut_w // 2, 0, width)
  rows = tf.range(height)[None, :]
  cols = tf.range(width)[None, :]
  in_rows = (rows >= u1[:, None]) & (rows < u2[:, None])  # [B, H]
  in_cols = (cols >= v1[:, None]) & (cols < v2[:, None])  # [B, W]
  return tf.cast(in_rows[:, :, None] & in_cols[:, None, :], tf.float32)


def _concat_mask(seed, kappa0, length: int, other: int, axis: int):
  """Ones on the first floor(kappa * S) cells of one axis, or (per example, probability 1/2) on
  its last floor((1 - kappa) * S) cells (docs/method.md §3.3)."""
  batch = tf.shape(kappa0)[0]
  positions = tf.range(length, dtype=tf.float32)[None, :]
  head = positions < tf.floor(kappa0 * length)[:, None]
  tail = positions >= (length - tf.floor((1.0 - kappa0) * length))[:, None]
  flip = tf.random.stateless_uniform([batch], seed) < 0.5
  line = tf.cast(tf.where(flip[:, None], tail, head), tf.float32)  # [B, S]
  line = line[:, :, None] if axis == 1 else line[:, None, :]
  shape = [batch, length, other] if axis == 1 else [batch, other, length]
  return tf.broadcast_to(line, shape)


@register_patch_sampler("hconcat")
def horizontal_concat(seed, kappa0, height: int, width: int) -> tf.Tensor:
  """Horizontal concatenation (Table 2): split the H axis, top / bottom parts."""
  return _concat_mask(seed, kappa0, height, width, axis=1)


@register_patch_sampler("vconcat")
def vertical_concat(seed, kappa0, height: int, width: int) -> tf.Tensor:
  """Vertical concatenation (Table 2): split the W axis, left / right parts."""
  return _concat_mask(seed, kappa0, width, height, axis=2)


PATCHUP_BLOCK = 7


@register_patch_sampler("patchup")
def patchup_2d(seed, kappa0, height: int, width: int) -> tf.Tensor:
  """PatchUp 2D, hard (Table 2): Bernoulli(gamma) block centres dilated by a 7x7 max-pool.

  gamma = kappa * W^2 / (7^2 (W - 7 + 1)^2), the reference's DropBlock-style rate (docs/method.md §3.3);
  the block shrinks to the grid on grids smaller than 7.
  """
  block = min(PATCHUP_BLOCK, height, width)
  gamma = kappa0 * width**2 / (block**2 * (width - block + 1)**2)
  batch = tf.shape(kappa0)[0]
  centres = tf.random.stateless_uniform([batch, height, width], seed) < gamma[:, None, None]
  blocks = tf.nn.max_pool2d(tf.cast(centres, tf.float32)[..., None], block, 1, "SAME")
  return blocks[..., 0]


COWMASK_SIGMA_RANGE = (4.0, 16.0)
COWMASK_PROPORTION_RANGE = (0.2, 0.8)


@register_patch_sampler("cowmask")
def cow_mask(seed, kappa0, height: int, width: int) -> tf.Tensor:
  """CowMask (Table 2; docs/method.md §3.3): thresholded Gaussian-blurred noise. kappa0 is ignored.

  Proportion pi ~ U(0.2, 0.8), sigma log-uniform in [4, 16], a 97-tap separable Gaussian (each 1-D
  factor normalised by sqrt(2 pi sigma^2)) over N(0, 1) noise with zero padding; ones where the
  blurred noise <= mean + sqrt(2) erfinv(2 pi - 1) std.
  """
  batch = tf.shape(kappa0)[0]
  seed_p, seed_s, seed_n = _split(seed, 3)
  proportion = tf.random.stateless_uniform([batch], seed_p, *COWMASK_PROPORTION_RANGE)
  log_lo, log_hi = tf.math.log(COWMASK_SIGMA_RANGE[0]), tf.math.log(COWMASK_SIGMA_RANGE[1])
  sigma = tf.exp(tf.random.stateless_uniform([batch], seed_s, log_lo, log_hi))
  radius = int(np.ceil(3 * COWMASK_SIGMA_RANGE[1]))  # 48 -> 97 taps
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)[:, None]  # [97, 1]
  kernel = tf.exp(-0.5 * tf.square(taps / sigma)) / tf.sqrt(2 * np.pi * tf.square(sigma))  # [97, B]
  noise = tf.random.stateless_normal([1, height, width, batch], seed_n)  # examples as channels
  blurred = tf.nn.depthwise_conv2d(noise, kernel[:, None, :, None], [1, 1, 1, 1], "SAME")
  blurred = tf.nn.depthwise_conv2d(blurred, kernel[None, :, :, None], [1, 1, 1, 1], "SAME")
  blurred = tf.transpose(blurred[0], [2, 0, 1])  # [B, H, W]
  mean, var = tf.nn.moments(blurred, axes=[1, 2])
  threshold = mean + np.sqrt(2.0) * tf.math.erfinv(2 * proportion - 1) * tf.sqrt(var)
  return tf.cast(blurred <= threshold[:, None, None], tf.float32)


FMIX_DECAY_POWER = 3.0


@register_patch_sampler("fmix")
def fmix(seed, kappa0, height: int, width: int) -> tf.Tensor:
  """FMix (Table 2): the top round(kappa * HW) cells of a low-pass Fourier-space random field.

  Decay power 3, the FMix paper's default (the reference code has no FMix: docs/method.md §3.3).
  """
  batch = tf.shape(kappa0)[0]
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.fftfreq(width)[None, :]
  freq = np.sqrt(fx**2 + fy**2)
  scale = 1.0 / np.maximum(freq, 1.0 / max(height, width))**FMIX_DECAY_POWER
  seed_re, seed_im = _split(seed, 2)
  real = tf.random.stateless_normal([batch, height, width], seed_re) * scale
  imag = tf.random.stateless_normal([batch, height, width], seed_im) * scale
  field = tf.math.real(tf.signal.ifft2d(tf.complex(real, imag)))
  flat = tf.reshape(field, [batch, height * width])
  num_ones = tf.cast(tf.round(kappa0 * height * width), tf.int32)
  ranks = tf.argsort(tf.argsort(flat, axis=1, direction="DESCENDING"), axis=1)
  return tf.reshape(tf.cast(ranks < num_ones[:, None], tf.float32), [batch, height, width])


def _linear_masks(kappa, height, width):
  return tf.broadcast_to(kappa[:, :, None, None, None],
                         tf.concat([tf.shape(kappa), [height, width, 1]], 0))


def _patch_masks(patch, kappa):
  """Member 0 takes `patch`; members j >= 1 share the complement in proportion kappa_j (Sec. 3.5)."""
  num_members = kappa.shape[1]
  rest = kappa[:, 1:]
  total = tf.reduce_sum(rest, axis=1, keepdims=True)
  share = tf.where(total > 0, rest / tf.maximum(total, 1e-12), 1.0 / (num_members - 1))
  patch = patch[:, None, :, :, None]  # [B, 1, H, W, 1]
  others = (1.0 - patch) * share[:, :, None, None, None]
  return tf.concat([patch, others], axis=1)


def sample_masks(batch_size, height: int, width: int, num_members: int, method: str = "linear",
                 alpha: float = 2.0, patch_probability=0.5, seed=0, batch_seed=None):
  """Samples MixMo masks and realised ratios for one batch.

  Args:
    batch_size: B (int or scalar tensor).
    height, width: the stems' output grid (32x32 on CIFAR and on Tiny ImageNet).
    num_members: M >= 1.
    method: "linear" (constant masks kappa_i, kappa ~ Dir(alpha)), "mimo" (kappa = 1/M), or a
      registered patch sampler such as "cutmix" (binary masks, Eq. 2).
    alpha: Dirichlet / Beta concentration.
    patch_probability: p. Patch methods use the patch mask with probability p and the linear mask
      otherwise, drawn once per batch as in the reference (docs/method.md §3.2 step 7, Sec. 4).
    seed: int or [2] int32 tensor; the result is a pure function of it (and of batch_seed).
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
  seed = _as_seed(seed)
  seed_kappa, seed_patch, seed_coin, seed_perm = _split(seed, 4)
  if batch_seed is not None:
    seed_coin, seed_perm = _split(_as_seed(batch_seed), 2)
  if num_members == 1:
    return tf.ones([batch_size, 1, height, width, 1], tf.float32), tf.ones([batch_size, 1])
  if method == "mimo":
    kappa = tf.fill([batch_size, num_members], 1.0 / num_members)
    return _linear_masks(kappa, height, width), kappa
  kappa = sample_kappa(batch_size, num_members, alpha, seed_kappa)
  masks = _linear_masks(kappa, height, width)
  if method == "linear":
    return masks, kappa
  patch = PATCH_SAMPLERS[method](seed_patch, kappa[:, 0], height, width)
  use_patch = tf.random.stateless_uniform([], seed_coin) < tf.cast(patch_probability, tf.float32)
  masks = tf.where(use_patch, _patch_masks(patch, kappa), masks)
  # Role shuffle, once per batch: the patched member is a random one (docs/method.md §3.2 step 6).
  perm = tf.argsort(tf.random.stateless_uniform([num_members], seed_perm))
  masks = tf.gather(masks, perm, axis=1)
  kappa = tf.reduce_mean(masks, axis=[2, 3, 4])
  return masks, kappa


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

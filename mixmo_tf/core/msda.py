"""Pixel-level mixed sample data augmentation (Mixup, CutMix) and its MixMo interaction.

docs/method.md §8: each example is mixed with probability p with a partner drawn from the whole
training set, lambda ~ Beta(alpha, alpha). CutMix keeps the example inside the box (lambda := box
area). Combined with MixMo (Sec. 4.2), lambda is re-estimated on what survives the member's feature
mask, and the paste is reversed when the example would hold less than half of the visible area.
Written in `keras.ops` (+ `mixmo_tf.core.rng`): one copy for every Keras backend.
"""

from __future__ import annotations

from keras import ops

from mixmo_tf.core import rng
from mixmo_tf.core.mixing import cutmix_box

MSDA_METHODS = ("mixup", "cutmix")


def visible_ratio(box, feature_mask):
  """lambda' = mean(B * m) / (mean(m) + 1e-8) per example (docs/method.md §8.2 step 1).

  box: [B, H, W] pixel mask; feature_mask: [B, h, w, 1] on the stems' grid. The box is average
  pooled to the feature grid first when the stem downsamples (Tiny ImageNet: 64 -> 32).
  """
  box = ops.cast(box, "float32")[..., None]
  factor = box.shape[1] // feature_mask.shape[1]
  if factor > 1:
    box = ops.average_pool(box, factor, factor, padding="valid", data_format="channels_last")
  m = ops.cast(feature_mask, "float32")
  return ops.mean(box * m, axis=[1, 2, 3]) / (ops.mean(m, axis=[1, 2, 3]) + 1e-8)


def apply_msda(images, targets, partner_images, partner_targets, seed, method: str,
               alpha: float = 1.0, probability: float = 0.5, feature_mask=None):
  """Mixes `images` [B, H, W, C] with partners; returns (images, soft targets [B, K]).

  Each example is mixed with probability `probability`; lambda ~ Beta(alpha, alpha) per example
  (docs/method.md §8). With `feature_mask` [B, h, w, 1] (MixMo + CutMix), lambda is adjusted to the
  visible region and the majority swap of docs/method.md §8.2 applies.
  """
  if method not in MSDA_METHODS:
    raise ValueError(f"Unknown msda {method!r}; expected one of {MSDA_METHODS}.")
  seed_lam, seed_apply, seed_box = rng.split_list(seed, 3)
  batch = ops.shape(images)[0]
  lam = rng.beta([batch], seed_lam, alpha, alpha)
  apply = rng.uniform([batch], seed_apply) < probability
  if method == "mixup":
    lam = ops.where(apply, lam, 1.0)
    w = lam[:, None, None, None]
    mixed = w * images + (1.0 - w) * partner_images
  else:
    box = cutmix_box(seed_box, lam, images.shape[1], images.shape[2])
    box = ops.where(apply[:, None, None], box, 1.0)  # Not applied: the whole image is kept.
    lam = ops.mean(box, axis=[1, 2])
    if feature_mask is not None:
      lam = visible_ratio(box, feature_mask)
      swap = lam < 0.5  # Majority swap: the member's own example keeps most of the visible area.
      box = ops.where(swap[:, None, None], 1.0 - box, box)
      lam = ops.where(swap, 1.0 - lam, lam)
    keep = box[..., None]
    mixed = keep * images + (1.0 - keep) * partner_images
  lam_t = lam[:, None]
  return mixed, lam_t * targets + (1.0 - lam_t) * partner_targets

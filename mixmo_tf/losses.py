"""MixMo training loss (Ramé et al., ICCV 2021, Sec. 3.3): w_r re-weighting and soft cross-entropy."""

from __future__ import annotations

import tensorflow as tf


def mixmo_weights(kappa, weight_root: float) -> tf.Tensor:
  """Loss weights w_r (Eq. 3 and its M-input form, Sec. 3.5): M * kappa_i^(1/r) / sum_j kappa_j^(1/r).

  kappa: [B, M] realised mixing ratios (rows sum to 1). Finite for kappa in {0, 1}; the weights sum
  to M; r = 1 gives M * kappa; r -> inf gives 1 for every member.
  """
  kappa = tf.clip_by_value(tf.cast(kappa, tf.float32), 0.0, 1.0)
  num_members = tf.cast(tf.shape(kappa)[-1], tf.float32)
  powered = tf.pow(kappa, 1.0 / weight_root)
  total = tf.reduce_sum(powered, axis=-1, keepdims=True)
  # All-zero rows cannot come from valid masks; give them equal weights instead of NaN.
  return tf.where(total > 0, num_members * powered / tf.maximum(total, 1e-30), 1.0)


def soft_cross_entropy(targets, logits) -> tf.Tensor:
  """-sum_k t_k log softmax(z)_k over the last axis, computed in float32; targets may be soft."""
  logits = tf.cast(logits, tf.float32)
  return -tf.reduce_sum(tf.cast(targets, tf.float32) * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def mixmo_loss(targets, logits, kappa, weight_root: float) -> tf.Tensor:
  """Per-example sum_i w_r(kappa)_i * CE(t_i, z_i): targets [B, M, K], logits [B, M, K] -> [B]."""
  weights = mixmo_weights(kappa, weight_root)
  return tf.reduce_sum(weights * soft_cross_entropy(targets, logits), axis=-1)


def l2_penalty(variables) -> tf.Tensor:
  """sum of squares of all given variables (docs/method.md §5: every trainable parameter, BN included)."""
  return tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])

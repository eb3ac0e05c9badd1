"""MixMo training loss (Ramé et al., ICCV 2021, Sec. 3.3): w_r re-weighting and soft cross-entropy.

Written in `keras.ops`, so the same equations serve every Keras backend (docs/method.md §5).
"""

from __future__ import annotations

from keras import ops


def mixmo_weights(kappa, weight_root: float):
  """Loss weights w_r (Eq. 3; M inputs, Sec. 3.5): M * kappa_i^(1/r) / sum_j kappa_j^(1/r).

  kappa: [B, M] realised mixing ratios (rows sum to 1). Finite for kappa in {0, 1}; the weights sum
  to M; r = 1 gives M * kappa; r -> inf gives 1 for every member (docs/method.md §5).
  """
  kappa = ops.clip(ops.cast(kappa, "float32"), 0.0, 1.0)
  num_members = ops.cast(ops.shape(kappa)[-1], "float32")
  powered = ops.power(kappa, 1.0 / weight_root)
  total = ops.sum(powered, axis=-1, keepdims=True)
  # All-zero rows cannot come from valid masks; give them equal weights instead of NaN.
  return ops.where(total > 0, num_members * powered / ops.maximum(total, 1e-30), 1.0)


def soft_cross_entropy(targets, logits):
  """-sum_k t_k log softmax(z)_k over the last axis, computed in float32; targets may be soft."""
  log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
  return -ops.sum(ops.cast(targets, "float32") * log_probs, axis=-1)


def mixmo_loss(targets, logits, kappa, weight_root: float):
  """Per-example sum_i w_r(kappa)_i * CE(t_i, z_i): targets [B, M, K], logits [B, M, K] -> [B]."""
  weights = mixmo_weights(kappa, weight_root)
  return ops.sum(weights * soft_cross_entropy(targets, logits), axis=-1)


def l2_penalty(variables):
  """Sum of squares of all given variables (docs/method.md §5: every trainable parameter, BN
  included)."""
  return ops.sum(ops.stack([ops.sum(ops.square(ops.cast(v, "float32"))) for v in variables]))

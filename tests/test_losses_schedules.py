"""w_r re-weighting (Eq. 3), soft cross-entropy, LR and p(t) schedules."""

import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf.core.losses import mixmo_loss, mixmo_weights, soft_cross_entropy
from mixmo_tf.core.schedules import WarmupPiecewiseSchedule, patch_probability


@pytest.mark.parametrize("kappa,expected", [(0.1, (0.6493, 1.3507)), (0.25, (0.8189, 1.1811)),
                                            (0.5, (1.0, 1.0)), (0.0, (0.0, 2.0)),
                                            (1.0, (2.0, 0.0))])
def test_weights_match_eq3_hand_values(kappa, expected):
  w = mixmo_weights(tf.constant([[kappa, 1 - kappa]]), 3.0).numpy()[0]
  np.testing.assert_allclose(w, expected, atol=1e-4)
  # Eq. 3 written out for member 0.
  k = kappa ** (1 / 3)
  np.testing.assert_allclose(w[0], 2 * k / (k + (1 - kappa) ** (1 / 3)), atol=1e-6)


def test_weights_limits_and_sum():
  kappa = tf.constant(np.random.default_rng(0).dirichlet([2, 2, 2], 100), tf.float32)
  np.testing.assert_allclose(mixmo_weights(kappa, 1.0), 3 * kappa, atol=1e-5)
  np.testing.assert_allclose(mixmo_weights(kappa, 1e6), 1.0, atol=1e-4)
  for r in (0.5, 1.0, 3.0, 10.0):
    w = mixmo_weights(kappa, r)
    np.testing.assert_allclose(tf.reduce_sum(w, -1), 3.0, atol=1e-5)
    assert np.all(np.isfinite(w))


def test_soft_cross_entropy_and_weighted_loss():
  logits = tf.constant([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])  # [B=1, M=2, K=3]
  targets = tf.constant([[[1.0, 0.0, 0.0], [0.0, 0.3, 0.7]]])
  logp = tf.nn.log_softmax(logits).numpy()[0]
  ce = [-logp[0, 0], -(0.3 * logp[1, 1] + 0.7 * logp[1, 2])]
  np.testing.assert_allclose(soft_cross_entropy(targets, logits)[0], ce, rtol=1e-6)
  kappa = tf.constant([[0.25, 0.75]])
  w = mixmo_weights(kappa, 3.0).numpy()[0]
  np.testing.assert_allclose(mixmo_loss(targets, logits, kappa, 3.0), [w @ ce], rtol=1e-6)


def test_patch_probability_schedule():
  # E = 300: 0.5 through epoch 275, 0.48 at 276, 0.02 at 299, 0 at 300 (docs/method.md §4).
  p = lambda e: float(patch_probability(e, 300, 0.5))
  assert p(1) == 0.5 and p(274) == 0.5
  np.testing.assert_allclose([p(275), p(276), p(299), p(300)], [0.5, 0.48, 0.02, 0.0], atol=1e-6)
  np.testing.assert_allclose(float(patch_probability(11, 12, 0.5)), 0.5, atol=1e-6)
  np.testing.assert_allclose(float(patch_probability(12, 12, 0.5)), 0.0, atol=1e-6)


def test_lr_schedule_warmup_and_milestones():
  sched = WarmupPiecewiseSchedule(0.1, steps_per_epoch=10, warmup_steps=10, milestones=(3, 5))
  lr = lambda it: float(sched(it))
  np.testing.assert_allclose([lr(0), lr(4), lr(9), lr(10)], [0.01, 0.05, 0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose([lr(19), lr(20), lr(39), lr(40), lr(1000)],
                             [0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
  clone = WarmupPiecewiseSchedule.from_config(sched.get_config())
  assert clone.get_config() == sched.get_config()

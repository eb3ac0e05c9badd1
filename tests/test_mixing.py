"""Mask sampling (Sec. 3.2, 3.5) and the mixing block (Sec. 3.1)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from mixmo_tf import MixingLayer, sample_masks
from mixmo_tf.core.mixing import cutmix_box
from tests.reference import is_rectangle, reference_cutmix_kappa


@pytest.mark.parametrize("method", ["linear", "cutmix", "mimo"])
@pytest.mark.parametrize("members", [1, 2, 3, 4])
def test_masks_sum_to_one_and_kappa_is_mask_mean(method, members):
  masks, kappa = sample_masks(16, 8, 6, members, method, alpha=2.0, patch_probability=0.5, seed=3)
  assert masks.shape == (16, members, 8, 6, 1) and kappa.shape == (16, members)
  assert masks.dtype == tf.float32
  np.testing.assert_allclose(tf.reduce_sum(masks, 1), 1.0, atol=1e-6)
  np.testing.assert_allclose(kappa, tf.reduce_mean(masks, [2, 3, 4]), atol=1e-6)
  assert np.all(masks.numpy() >= 0)


def test_cutmix_masks_are_binary_rectangles_or_complements():
  for seed in range(20):
    masks, _ = sample_masks(32, 16, 16, 2, "cutmix", patch_probability=1.0, seed=seed)
    m0 = masks.numpy()[:, 0, :, :, 0]
    assert set(np.unique(m0)) <= {0.0, 1.0}
    for m in m0:
      assert is_rectangle(m) or is_rectangle(1 - m)


def test_cutmix_kappa_distribution_matches_reference_procedure():
  n, size = 20000, 32
  lam = np.random.default_rng(0).beta(2, 2, n).astype(np.float32)
  ours = tf.reduce_mean(cutmix_box(tf.constant([5, 7]), tf.constant(lam), size, size), [1, 2])
  ref = reference_cutmix_kappa(n, size, np.random.default_rng(1))
  assert stats.ks_2samp(ours.numpy(), ref).pvalue > 0.01
  # Truncation makes the sampler's kappa differ from Beta(2, 2): an untruncated box fails this.
  assert stats.kstest(ours.numpy(), stats.beta(2, 2).cdf).pvalue < 1e-6
  # Through sample_masks (kappa drawn inside, role shuffle included): min(kappa, 1 - kappa) is
  # swap-invariant, and follows the reference procedure, not the Beta(2, 2) it starts from.
  _, kappa = sample_masks(n, size, size, 2, "cutmix", patch_probability=1.0, seed=11)
  ours_min = np.minimum(kappa[:, 0], kappa[:, 1])
  assert stats.ks_2samp(ours_min, np.minimum(ref, 1 - ref)).pvalue > 0.01
  beta = np.random.default_rng(2).beta(2, 2, n)
  assert stats.ks_2samp(ours_min, np.minimum(beta, 1 - beta)).pvalue < 1e-6


def test_linear_kappa_is_beta_2_2():
  _, kappa = sample_masks(20000, 4, 4, 2, "linear", alpha=2.0, seed=5)
  assert stats.kstest(kappa[:, 0].numpy(), stats.beta(2, 2).cdf).pvalue > 0.01
  _, kappa3 = sample_masks(20000, 4, 4, 3, "linear", alpha=2.0, seed=5)
  # Dirichlet(2, 2, 2) marginals are Beta(2, 4).
  assert stats.kstest(kappa3[:, 1].numpy(), stats.beta(2, 4).cdf).pvalue > 0.01


def test_patch_probability_extremes_and_per_batch_choice():
  for seed in range(10):
    masks, _ = sample_masks(8, 8, 8, 2, "cutmix", patch_probability=0.0, seed=seed)
    m = masks.numpy()
    assert np.all(m == m[:, :, :1, :1, :])  # constant per example: linear
    masks, _ = sample_masks(8, 8, 8, 2, "cutmix", patch_probability=1.0, seed=seed)
    assert set(np.unique(masks.numpy())) <= {0.0, 1.0}
  binary = [set(np.unique(sample_masks(8, 8, 8, 2, "cutmix", 2.0, 0.5, seed=s)[0].numpy()))
            <= {0.0, 1.0} for s in range(200)]
  assert 0.4 < np.mean(binary) < 0.6


def test_role_shuffle_is_per_batch_and_fair():
  rect_for_member0 = []
  for seed in range(200):
    masks, _ = sample_masks(16, 16, 16, 2, "cutmix", patch_probability=1.0, seed=seed)
    m0 = masks.numpy()[:, 0, :, :, 0]
    non_trivial = [m for m in m0 if 0 < m.sum() < m.size]
    is_rect = [is_rectangle(m) and not is_rectangle(1 - m) for m in non_trivial]
    assert len(set(is_rect)) <= 1  # one role for the whole batch
    if is_rect:
      rect_for_member0.append(is_rect[0])
  assert 0.4 < np.mean(rect_for_member0) < 0.6


def test_more_than_two_members_patch_one_interpolate_others():
  masks, kappa = sample_masks(64, 8, 8, 3, "cutmix", patch_probability=1.0, seed=2)
  m = masks.numpy()[..., 0]
  for example in m:
    binary = [np.all(np.isin(example[i], [0.0, 1.0])) for i in range(3)]
    assert sum(binary) >= 1
    patched = int(np.argmax(binary))
    others = [i for i in range(3) if i != patched]
    box = example[patched]
    for i in others:  # zero on the box, constant on its complement
      assert np.all(example[i][box == 1] == 0)
      assert np.ptp(example[i][box == 0]) < 1e-6 if (box == 0).any() else True


def test_same_seed_same_masks_and_tf_function():
  a = sample_masks(8, 8, 8, 2, "cutmix", patch_probability=0.5, seed=tf.constant([1, 2]))
  b = tf.function(lambda s: sample_masks(8, 8, 8, 2, "cutmix", patch_probability=0.5, seed=s))(
      tf.constant([1, 2]))
  c = sample_masks(8, 8, 8, 2, "cutmix", patch_probability=0.5, seed=tf.constant([1, 3]))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


def test_unknown_method_is_rejected():
  with pytest.raises(ValueError, match="'bogus'"):
    sample_masks(2, 4, 4, 2, "bogus")


def test_mixing_layer_equation_and_inference_sum():
  rng = np.random.default_rng(0)
  feats = [tf.constant(rng.normal(size=(4, 5, 5, 3)), tf.float32) for _ in range(3)]
  masks, _ = sample_masks(4, 5, 5, 3, "cutmix", patch_probability=1.0, seed=1)
  layer = MixingLayer()
  expected = 3 * sum(masks[:, i] * feats[i] for i in range(3))
  np.testing.assert_allclose(layer(feats, masks=masks), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(layer(feats), sum(feats), rtol=1e-6, atol=1e-6)
  half = tf.cast(layer([tf.cast(f, tf.bfloat16) for f in feats], masks=masks), tf.float32)
  np.testing.assert_allclose(half, expected, rtol=0.05, atol=0.05)


def test_mixing_layer_config_round_trip():
  layer = MixingLayer(name="mix")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert isinstance(clone, MixingLayer) and clone.name == "mix"


def test_batch_seed_makes_one_decision_for_all_replicas():
  """Replicas draw their own boxes and kappa but share the per-batch coin and role shuffle."""
  for step in range(20):
    shared = tf.constant([step, 99])
    kinds = []
    for replica in range(2):
      masks, _ = sample_masks(16, 8, 8, 2, "cutmix", patch_probability=0.5,
                              seed=tf.constant([replica, step]), batch_seed=shared)
      m0 = masks.numpy()[:, 0, :, :, 0]
      binary = set(np.unique(m0)) <= {0.0, 1.0}
      role = None
      if binary:
        nontrivial = [m for m in m0 if 0 < m.sum() < m.size]
        role = is_rectangle(nontrivial[0]) and not is_rectangle(1 - nontrivial[0])
      kinds.append((binary, role))
    assert kinds[0] == kinds[1], step

"""Per-method semantics: Table 2 mask shapes, MIMO, vanilla, MSDA and its MixMo adjustment."""

import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf import sample_masks
from mixmo_tf.core import mixing, msda, rng
from mixmo_tf.core.losses import mixmo_loss

TABLE2 = ("hconcat", "vconcat", "patchup", "fmix", "cowmask", "cutmix")


@pytest.mark.parametrize("method", TABLE2)
def test_table2_samplers_sum_to_one_and_track_kappa(method):
  masks, kappa = sample_masks(2000, 32, 32, 2, method, alpha=2.0, patch_probability=1.0, seed=9)
  np.testing.assert_allclose(tf.reduce_sum(masks, 1), 1.0, atol=1e-6)
  assert set(np.unique(masks.numpy())) <= {0.0, 1.0}
  np.testing.assert_allclose(kappa, tf.reduce_mean(masks, [2, 3, 4]), atol=1e-6)
  if method != "cowmask":  # CowMask ignores kappa: its proportion is U(0.2, 0.8).
    lam = mixing.sample_kappa(2000, 2, 2.0, rng.split(9, 4)[0])[:, 0]  # as sample_masks draws it
    realised = tf.reduce_mean(mixing.PATCH_SAMPLERS[method](
        tf.constant([1, 2]), lam, 32, 32), [1, 2])
    error = tf.abs(realised - lam)
    if method in ("hconcat", "vconcat"):  # flipped examples hold the complement, 1 - kappa
      error = tf.minimum(error, tf.abs(realised - (1 - lam)))
      assert float(tf.reduce_max(error)) <= 1 / 32 + 1e-6
    if method == "cutmix":  # floors and border clipping only shrink the box (docs/method.md §3.2)
      assert float(tf.reduce_max(realised - lam)) <= 1e-6
    tol = {"patchup": 0.12, "cutmix": 0.25}.get(method, 0.04)
    assert float(tf.reduce_mean(error)) < tol, method


def test_concat_shapes_split_the_right_axis():
  h = mixing.horizontal_concat(tf.constant([0, 1]), tf.fill([50], 0.25), 8, 8).numpy()
  v = mixing.vertical_concat(tf.constant([0, 1]), tf.fill([50], 0.25), 8, 8).numpy()
  assert np.all(h == h[:, :, :1])  # constant along W: split on H (top / bottom)
  assert np.all(v == v[:, :1, :])  # constant along H: split on W (left / right)
  sizes = set(h[:, :, 0].sum(1))
  assert sizes <= {2.0, 6.0} and len(sizes) == 2  # floor(0.25 * 8) at the top or floor(.75*8) at the end


def test_cowmask_proportion_follows_uniform():
  m = mixing.cow_mask(tf.constant([3, 4]), tf.zeros([500]), 32, 32)
  ratio = tf.reduce_mean(m, [1, 2]).numpy()
  assert 0.15 < ratio.min() and ratio.max() < 0.85
  assert abs(ratio.mean() - 0.5) < 0.05


def test_mimo_masks_are_constant_one_over_m():
  for members in (2, 3):
    masks, kappa = sample_masks(8, 4, 4, members, "mimo", seed=1)
    np.testing.assert_allclose(masks, 1.0 / members)
    np.testing.assert_allclose(kappa, 1.0 / members)


def test_vanilla_loss_is_plain_cross_entropy():
  logits = tf.random.normal([6, 1, 5], seed=0)
  labels = tf.constant([0, 1, 2, 3, 4, 0])
  masks, kappa = sample_masks(6, 4, 4, 1, "cutmix", seed=0)
  np.testing.assert_allclose(masks, 1.0)
  loss = mixmo_loss(tf.one_hot(labels, 5)[:, None], logits, kappa, 3.0)
  expected = tf.keras.losses.sparse_categorical_crossentropy(labels, logits[:, 0],
                                                             from_logits=True)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_msda_soft_label_mass_matches_mixed_area(method):
  rng = np.random.default_rng(0)
  x = tf.zeros([256, 8, 8, 3])
  partner = tf.ones([256, 8, 8, 3])
  y = tf.one_hot(rng.integers(0, 3, 256), 4)
  py = tf.one_hot(np.full(256, 3), 4)
  mixed, t = msda.apply_msda(x, y, partner, py, tf.constant([1, 1]), method, 1.0, 0.5)
  partner_area = tf.reduce_mean(mixed, [1, 2, 3])  # 1 where the partner shows
  np.testing.assert_allclose(t[:, 3], partner_area, atol=1e-6)  # label mass = mixed area
  np.testing.assert_allclose(tf.reduce_sum(t, 1), 1.0, atol=1e-6)
  untouched = float(tf.reduce_mean(tf.cast(partner_area == 0, tf.float32)))
  assert 0.35 < untouched < 0.65  # applied with probability 1/2
  if method == "cutmix":
    assert set(np.unique(mixed.numpy())) <= {0.0, 1.0}


def test_msda_ratio_under_feature_mask_hand_built():
  """lambda' = mean(B * m) / mean(m), then the majority swap (docs/method.md §8.2)."""
  box = np.zeros((1, 4, 4), np.float32)
  box[0, :2, :] = 1.0  # pixel box: top half, mean 0.5
  feature = np.zeros((1, 4, 4, 1), np.float32)
  feature[0, :, :1] = 1.0  # feature mask: first column, mean 0.25
  # Overlap: top half of the first column = 2 cells / 16; visible ratio (2/16) / (4/16) = 0.5.
  np.testing.assert_allclose(msda.visible_ratio(tf.constant(box), tf.constant(feature)), [0.5],
                             atol=1e-6)
  feature[0, 0, :] = 1.0  # now first row + first column: 7 cells, 4 + 1 of them in the box
  np.testing.assert_allclose(msda.visible_ratio(tf.constant(box), tf.constant(feature)),
                             [5 / 7], atol=1e-6)
  # Tiny ImageNet: an 8x8 pixel box pooled 2x2 to the 4x4 feature grid.
  big = np.kron(box, np.ones((2, 2), np.float32))
  np.testing.assert_allclose(msda.visible_ratio(tf.constant(big), tf.constant(feature)),
                             [5 / 7], atol=1e-6)


def test_msda_majority_swap_keeps_own_label_dominant():
  x, partner = tf.zeros([512, 8, 8, 3]), tf.ones([512, 8, 8, 3])
  y, py = tf.one_hot(np.zeros(512, int), 2), tf.one_hot(np.ones(512, int), 2)
  masks, _ = sample_masks(512, 8, 8, 2, "cutmix", patch_probability=1.0, seed=3)
  mixed, t = msda.apply_msda(x, y, partner, py, tf.constant([2, 2]), "cutmix", 1.0, 1.0,
                             feature_mask=masks[:, 0])
  assert float(tf.reduce_min(t[:, 0])) >= 0.5 - 1e-6
  own_visible = 1.0 - msda.visible_ratio(tf.reduce_mean(mixed, -1), masks[:, 0])
  np.testing.assert_allclose(t[:, 0], own_visible, atol=1e-5)

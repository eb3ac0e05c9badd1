"""The train step's wiring: member i's image, target, augmentation, MSDA partner and mask belong
together (docs/method.md §6, §8.2), for M = 2 and 3."""

import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf import step as step_lib

UNIQUE, REPS, SIZE = 8, 2, 8


def spec(members, msda="none", padding=2, num_classes=64):
  return step_lib.StepSpec(
      num_members=members, batch_repetitions=REPS, input_repetition_probability=0.0,
      mixing="cutmix", alpha=2.0, weight_root=3.0, msda=msda, msda_alpha=1.0,
      msda_probability=1.0, global_batch_size=UNIQUE * REPS, l2=0.0, num_replicas=1,
      num_classes=num_classes, crop_padding=padding, flip=True, mean=(0.0,) * 3, std=(1.0,) * 3,
      mask_shape=(SIZE, SIZE))


def constant_images(values):
  """One constant image per value: a pixel's value tells which example it came from."""
  return tf.constant(np.broadcast_to(np.asarray(values, np.uint8)[:, None, None, None],
                                     (len(values), SIZE, SIZE, 3)).copy())


@pytest.mark.parametrize("members", [2, 3])
def test_each_member_sees_its_own_example_target_and_augmentation(members):
  values = 20 * (np.arange(UNIQUE) + 1)  # example k shows value 20 (k + 1)
  labels = tf.constant((np.arange(UNIQUE) * 7) % 64, tf.int32)  # distinct labels
  batch = step_lib.member_batch(spec(members), constant_images(values), labels, (),
                                tf.constant([3, 4]), tf.constant([5, 6]), 1.0)
  indices = batch.indices.numpy()
  assert indices.shape == (members, UNIQUE * REPS)
  crops = []
  for i in range(members):
    x = np.round(batch.inputs[i].numpy() * 255).astype(int)  # mean 0, std 1: x = pixel / 255
    for j, k in enumerate(indices[i]):
      shown = set(np.unique(x[j])) - {0}  # zero padding of the random crop shows as 0
      assert shown == {values[k]}, (i, j)
      assert np.argmax(batch.targets[j, i]) == labels[k], (i, j)  # member i's own label
      crops.append((k, (x[j, ..., 0] == 0).tobytes()))
  # Every copy is cropped on its own: the copies of one example do not all share one crop.
  for k in range(UNIQUE):
    assert len({c for e, c in crops if e == k}) > 1, k


@pytest.mark.parametrize("members", [2, 3])
def test_msda_partner_and_label_ratio_follow_the_members_own_mask(members):
  num = UNIQUE * REPS
  own_values = 10 + np.arange(UNIQUE)
  partner_values = 100 + np.arange(members * num)  # partner p shows value 100 + p
  labels = tf.constant(np.arange(UNIQUE), tf.int32)
  partner_labels = tf.constant(UNIQUE + np.arange(members * num), tf.int32)
  partners = (constant_images(partner_values), partner_labels)
  batch = step_lib.member_batch(spec(members, "cutmix", padding=0, num_classes=UNIQUE + 48),
                                constant_images(own_values), labels, partners,
                                tf.constant([1, 2]), tf.constant([7, 8]), 1.0)
  indices, masks = batch.indices.numpy(), batch.masks.numpy()
  for i in range(members):
    x = np.round(batch.inputs[i].numpy()[..., 0] * 255).astype(int)
    for j, k in enumerate(indices[i]):
      partner = i * num + j  # member i takes the i-th block of partners
      assert set(np.unique(x[j])) <= {own_values[k], partner_values[partner]}, (i, j)
      t = batch.targets[j, i].numpy()
      assert t[k] + t[UNIQUE + partner] == pytest.approx(1.0, abs=1e-6)
      own = (x[j] == own_values[k]).astype(float)
      m = masks[j, i, ..., 0]
      if m.mean() < 1e-6:  # An empty feature mask: the member is not seen, its weight is 0.
        continue
      visible = (own * m).mean() / (m.mean() + 1e-8)
      # The label weight is the share of the member's own pixels under ITS feature mask, and
      # the majority swap keeps it >= 1/2 (docs/method.md §8.2).
      assert t[k] == pytest.approx(visible, abs=1e-5), (i, j)
      assert t[k] >= 0.5 - 1e-6


def test_masks_and_kappa_are_the_members_own():
  batch = step_lib.member_batch(spec(3), constant_images(np.arange(UNIQUE) + 1),
                                tf.zeros([UNIQUE], tf.int32), (), tf.constant([9, 9]),
                                tf.constant([1, 1]), 1.0)
  np.testing.assert_allclose(batch.kappa, tf.reduce_mean(batch.masks, [2, 3, 4]), atol=1e-6)
  np.testing.assert_allclose(tf.reduce_sum(batch.masks, 1), 1.0, atol=1e-6)

"""The train step's wiring: member i's image, target, augmentation, MSDA partner and mask belong
together (docs/method.md §6, §8.2), for M = 2 and 3; AugMix's order and seeding (§9)."""

import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf.core import tf_augmix as augmix_lib
from mixmo_tf.core import step as step_lib

UNIQUE, REPS, SIZE = 8, 2, 8


def spec(members, msda="none", padding=2, num_classes=64, flip=True, augmix=()):
  return step_lib.StepSpec(
      num_members=members, batch_repetitions=REPS, input_repetition_probability=0.0,
      mixing="cutmix", alpha=2.0, weight_root=3.0, msda=msda, msda_alpha=1.0,
      msda_probability=1.0, global_batch_size=UNIQUE * REPS, l2=0.0, num_replicas=1,
      num_classes=num_classes, crop_padding=padding, flip=flip, mean=(0.0,) * 3, std=(1.0,) * 3,
      mask_shape=(SIZE, SIZE), augmix=augmix)


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


AUGMIX = (3, 4, 3)  # width, max depth, severity: the Table 4 setting (docs/method.md §9).


def random_images(seed=0):
  """Textured images, so that AugMix's draws (ops, weights, blend) show in its output."""
  return tf.constant(np.random.RandomState(seed).randint(0, 256, (UNIQUE, SIZE, SIZE, 3)),
                     tf.uint8)


def spy_on_augmix(monkeypatch):
  """Records (input image, seed) of every AugMix call made by the step, then runs the real one."""
  calls, real = [], augmix_lib.augmix

  def spy(image, seed, *args):
    calls.append((image.numpy(), tuple(seed.numpy())))
    return real(image, seed, *args)
  monkeypatch.setattr(augmix_lib, "augmix", spy)  # The step imports it when AugMix is on.
  return calls


def test_augmix_sees_the_cropped_copy(monkeypatch):
  """Crop/flip come first (OFF, docs/method.md §9): AugMix's input carries the pad-crop border."""
  calls = spy_on_augmix(monkeypatch)
  values = 20 * (np.arange(UNIQUE) + 1)
  batch = step_lib.member_batch(spec(2, padding=2, augmix=AUGMIX), constant_images(values),
                                tf.zeros([UNIQUE], tf.int32), (), tf.constant([3, 4]),
                                tf.constant([5, 6]), 1.0)
  indices = batch.indices.numpy()
  assert len(calls) == indices.size  # One call per copy, in member-then-slot order.
  with_border = 0
  for (image, _), k in zip(calls, indices.reshape(-1)):
    levels = np.round(image * 255).astype(int)
    assert set(np.unique(levels)) <= {0, values[k]}  # The copy itself, float [0, 1].
    zero = (levels[..., 0] == 0)
    if zero.any():
      with_border += 1
      # The zeros form the crop's border: whole rows or whole columns at the edges.
      rows, cols = zero.all(axis=1), zero.all(axis=0)
      np.testing.assert_array_equal(zero, rows[:, None] | cols[None, :])
  # Offsets are uniform in 0..4 per axis: a copy shows no border only at (2, 2), p = 1/25.
  assert with_border >= indices.size // 2


def test_augmix_draws_are_shared_by_the_copies_in_one_member_slot(monkeypatch):
  """Copies of an example in one member slot share AugMix's draws (OFF, docs/method.md §9)."""
  args = (random_images(), tf.zeros([UNIQUE], tf.int32), (), tf.constant([3, 4]),
          tf.constant([5, 6]), 1.0)
  # Without crop and flip, the copies in a slot come out identical after AugMix...
  batch = step_lib.member_batch(spec(2, padding=0, flip=False, augmix=AUGMIX), *args)
  plain = step_lib.member_batch(spec(2, padding=0, flip=False), *args)
  indices = batch.indices.numpy()
  for i in range(2):
    x, raw = batch.inputs[i].numpy(), plain.inputs[i].numpy()
    assert np.abs(x - raw).max() > 0.05  # AugMix did change the images.
    for k in range(UNIQUE):
      copies = x[indices[i] == k]
      assert len(copies) == REPS
      for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])
  # ... while with crop and flip on, the copies keep their own crops under the shared seed.
  calls = spy_on_augmix(monkeypatch)
  batch = step_lib.member_batch(spec(2, padding=2, augmix=AUGMIX), *args)
  indices = batch.indices.numpy()
  cropped_differently = 0
  for i in range(2):
    for k in range(UNIQUE):
      copies = [calls[i * len(indices[i]) + j] for j in np.flatnonzero(indices[i] == k)]
      assert len({seed for _, seed in copies}) == 1, (i, k)
      cropped_differently += any((image != copies[0][0]).any() for image, _ in copies[1:])
  assert cropped_differently >= UNIQUE  # Of 2 x 8 pairs, (1/25 + ...) share their crop by chance.


def test_augmix_draws_differ_between_member_slots():
  """The same example in member slots 0 and 1 gets its own AugMix chain (docs/method.md §9)."""
  batch = step_lib.member_batch(spec(2, padding=0, flip=False, augmix=AUGMIX), random_images(1),
                                tf.zeros([UNIQUE], tf.int32), (), tf.constant([7, 8]),
                                tf.constant([5, 6]), 1.0)
  indices = batch.indices.numpy()
  first = [{k: x for x, k in zip(batch.inputs[i].numpy(), indices[i])} for i in range(2)]
  differ = sum(np.abs(first[0][k] - first[1][k]).max() > 1e-3 for k in range(UNIQUE))
  assert differ >= UNIQUE - 1  # "Most": an example whose chains all no-op would match.

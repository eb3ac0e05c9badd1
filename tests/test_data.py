"""Datasets, augmentation and batch repetition (docs/method.md §6, 9)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mixmo_tf.core import augment, seeds
from mixmo_tf.core import step as step_lib
from mixmo_tf.data import datasets
from mixmo_tf.data.batches import EpochBatches
from tests.helpers import tiny_config


@pytest.mark.parametrize("members,reps", [(2, 2), (2, 4), (3, 1), (1, 2)])
def test_each_example_appears_b_times_per_member(members, reps):
  idx = step_lib.member_indices(16, members, reps, 0.0, tf.constant([3, 4])).numpy()
  assert idx.shape == (members, 16 * reps)
  for m in range(members):
    np.testing.assert_array_equal(np.bincount(idx[m], minlength=16), np.full(16, reps))
  if members > 1:
    assert not np.array_equal(idx[0], idx[1])  # members see different pairings
    pairs = {tuple(p) for p in idx[:2].T}
    assert len(pairs) > 16 or reps == 1  # partners of an example vary across its copies


def test_input_repetition_shares_leading_slots():
  idx = step_lib.member_indices(16, 3, 4, 0.5, tf.constant([1, 2])).numpy()
  assert np.all(idx[:, :32] == idx[:1, :32])
  assert not np.array_equal(idx[1, 32:], idx[0, 32:])


def test_random_crop_flip_is_a_shifted_window():
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3)), tf.uint8)
  out = augment.random_crop_flip(images, tf.constant([0, 1]), padding=2, flip=True).numpy()
  src = images.numpy() / 255.0
  padded = np.pad(src, [(0, 0), (2, 2), (2, 2), (0, 0)])
  for i in range(64):
    matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
               if np.allclose((padded[i, dy:dy + 8, dx:dx + 8] if not f else
                               padded[i, dy:dy + 8, dx:dx + 8][:, ::-1]), out[i])]
    assert matches, i
  same = augment.random_crop_flip(images, tf.constant([0, 1]), padding=2, flip=True)
  np.testing.assert_array_equal(out, same)


def test_digits_split_is_fixed_and_disjoint(tmp_path):
  train, test, info = datasets.load(tiny_config(tmp_path))
  assert (info.num_train, info.num_test, info.num_classes) == (1438, 359, 10)
  assert train.images.shape == (1438, 8, 8, 3) and train.images.dtype == np.uint8
  train_set = {a.tobytes() for a in train.images}
  assert sum(a.tobytes() in train_set for a in test.images) < 10  # digits has a few duplicates


def test_epoch_order_is_one_keyed_permutation_for_every_position():
  """Batch i of epoch e is a pure function of (seed, e, i): the same when read again, from a
  resumed position or by another engine; other epochs and seeds order differently; partners come
  from an independent stream (docs/method.md §6.1, §8)."""
  examples = datasets.InMemory(np.zeros((100, 2, 2, 3), np.uint8), np.arange(100))
  batches = EpochBatches(examples, 16, seed=3, partner_batch_size=40)
  assert batches.num_batches == 6  # the incomplete last batch is dropped
  epoch = [batches.batch(1, i)[0][1] for i in range(6)]
  np.testing.assert_array_equal(np.concatenate(epoch),
                                seeds.epoch_order(3, 1, 100)[:96])
  assert len(set(np.concatenate(epoch))) == 96  # without replacement
  resumed = [pair[1] for pair, _ in batches.span(1, 4, 2)]
  np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(epoch[4:]))
  other_epoch = np.concatenate([batches.batch(2, i)[0][1] for i in range(6)])
  other_seed = EpochBatches(examples, 16, seed=4).batch(1, 0)[0][1]
  assert not np.array_equal(other_epoch, np.concatenate(epoch))
  assert not np.array_equal(other_seed, epoch[0])
  partners = np.concatenate([batches.batch(1, i)[1][1] for i in range(6)])
  assert len(partners) == 240  # 6 x 40 positions from consecutive permutations of the 100
  for block in (partners[:100], partners[100:200]):
    np.testing.assert_array_equal(np.sort(block), np.arange(100))
  assert not np.array_equal(partners[:96], np.concatenate(epoch))
  with pytest.raises(IndexError):
    batches.batch(0, 6)
  with pytest.raises(ValueError, match="seed"):
    EpochBatches(examples, 16, seed=-1)


def _write_tree(root, classes, per_class=3, size=8, mode="RGB"):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in classes:
      d = root / split / c
      d.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        arr = rng.integers(0, 256, (size, size, len(mode)) if mode != "L" else (size, size))
        Image.fromarray(arr.astype(np.uint8), mode).save(d / f"{i}.png")


def test_folder_dataset_labels_by_sorted_class(tmp_path):
  _write_tree(tmp_path, ["zebra", "ant", "moth"])
  train, test, info = datasets.load(tiny_config(tmp_path, dataset="folder",
                                                data_dir=str(tmp_path)))
  assert info.class_names == ("ant", "moth", "zebra")
  assert info.image_shape == (8, 8, 3) and info.num_train == 9
  np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  expected = np.asarray(Image.open(tmp_path / "train" / "ant" / "0.png"))
  np.testing.assert_array_equal(train.images[0], expected)


def test_resized_info_scales_crop_padding_and_keeps_none():
  from mixmo_tf.data.info import DataInfo
  info = DataInfo("x", 10, (32, 32, 3), 1, 1, (0.5,) * 3, (0.5,) * 3, 4, True)
  assert info.resized(64).crop_padding == 8 and info.resized(64).image_shape == (64, 64, 3)
  assert info.resized(8).crop_padding == 1  # never rounded down to no crop
  no_crop = DataInfo("x", 10, (32, 32, 3), 1, 1, (0.5,) * 3, (0.5,) * 3, 0, False)
  assert no_crop.resized(64).crop_padding == 0  # a dataset without crops gets none


def test_train_subset_is_the_same_fixed_sample_for_every_loader(tmp_path):
  from mixmo_tf.data.images import subset_indices
  keep = subset_indices(1438, 100)
  assert len(keep) == 100 and np.all(np.diff(keep) > 0)
  np.testing.assert_array_equal(keep, subset_indices(1438, 100))
  full, _, _ = datasets.load(tiny_config(tmp_path))
  sub, _, info = datasets.load(tiny_config(tmp_path, train_subset=100))
  assert info.num_train == 100
  np.testing.assert_array_equal(sub.images, full.images[keep])


def test_pillow_and_tensorflow_decoders_give_the_same_pixels(cifar10_folder):
  """Folders decode with pillow (`decode_images`) off TensorFlow and with tf.io
  (`decode_images_tf`) on it: on the shared CIFAR-10 JPEGs both give the same pixels, bit for bit.
  TensorFlow's default DCT (INTEGER_FAST), which round one used, differs by a few levels on most
  images: the reason `decode_images_tf` asks for the accurate one."""
  from mixmo_tf.data.images import decode_images, list_image_folder
  from mixmo_tf.data.tf_images import decode_images_tf
  paths, _, _ = list_image_folder(str(cifar10_folder), "test")
  paths = paths[::50]  # 200 images, 20 of each class.
  ours = decode_images(paths, 32)
  fast = np.stack([tf.io.decode_image(tf.io.read_file(p), channels=3).numpy() for p in paths])
  assert ours.shape == (200, 32, 32, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, decode_images_tf(paths, 32))
  gap = np.abs(ours.astype(int) - fast)
  assert 0 < gap.max() <= 8 and (gap > 0).mean() > 0.1  # The default really is another decoder.


def test_pillow_decoder_converts_modes_resizes_and_names_a_bad_file(tmp_path):
  from PIL import Image

  from mixmo_tf.data.images import decode_images
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
  rgba = np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
  Image.fromarray(gray, "L").save(tmp_path / "gray.png")
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  Image.fromarray(np.zeros((16, 16, 3), np.uint8) + 100).save(tmp_path / "big.png")
  images = decode_images([str(tmp_path / n) for n in ("gray.png", "rgba.png", "big.png")], 8)
  np.testing.assert_array_equal(images[0], np.dstack([gray] * 3))  # L -> RGB, replicated.
  np.testing.assert_array_equal(images[1], rgba[..., :3])  # Alpha dropped.
  np.testing.assert_array_equal(images[2], np.full((8, 8, 3), 100))  # Resized (flat stays flat).
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="bad.jpg"):
    decode_images([str(tmp_path / "gray.png"), str(tmp_path / "bad.jpg")], 8)

"""Datasets, augmentation and batch repetition (docs/method.md §6, 9)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mixmo_tf import data as data_lib
from mixmo_tf import step as step_lib
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
  out = data_lib.random_crop_flip(images, tf.constant([0, 1]), padding=2, flip=True).numpy()
  src = images.numpy() / 255.0
  padded = np.pad(src, [(0, 0), (2, 2), (2, 2), (0, 0)])
  for i in range(64):
    matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
               if np.allclose((padded[i, dy:dy + 8, dx:dx + 8] if not f else
                               padded[i, dy:dy + 8, dx:dx + 8][:, ::-1]), out[i])]
    assert matches, i
  same = data_lib.random_crop_flip(images, tf.constant([0, 1]), padding=2, flip=True)
  np.testing.assert_array_equal(out, same)


def test_digits_split_is_fixed_and_disjoint(tmp_path):
  train, test, info = data_lib.load(tiny_config(tmp_path))
  assert (info.num_train, info.num_test, info.num_classes) == (1438, 359, 10)
  x, y = next(iter(train.batch(2000)))
  assert x.shape == (1438, 8, 8, 3) and x.dtype == tf.uint8
  xt, _ = next(iter(test.batch(2000)))
  train_set = {a.tobytes() for a in x.numpy()}
  assert sum(a.tobytes() in train_set for a in xt.numpy()) < 10  # digits has a few duplicates


def test_epoch_order_is_seeded_and_resumable(tmp_path):
  train, _, info = data_lib.load(tiny_config(tmp_path))
  full = [y.numpy() for _, y in data_lib.train_batches(train, info, 16, 3, epoch=1)]
  again = [y.numpy() for _, y in data_lib.train_batches(train, info, 16, 3, epoch=1)]
  other = [y.numpy() for _, y in data_lib.train_batches(train, info, 16, 3, epoch=2)]
  skipped = [y.numpy() for _, y in data_lib.train_batches(train, info, 16, 3, 1, skip_batches=5)]
  np.testing.assert_array_equal(np.concatenate(full), np.concatenate(again))
  assert not np.array_equal(np.concatenate(full), np.concatenate(other))
  np.testing.assert_array_equal(np.concatenate(full[5:]), np.concatenate(skipped))
  assert len(full) == 1438 // 16


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
  train, test, info = data_lib.load(tiny_config(tmp_path, dataset="folder", data_dir=str(tmp_path)))
  assert info.class_names == ("ant", "moth", "zebra")
  assert info.image_shape == (8, 8, 3) and info.num_train == 9
  x, y = next(iter(train.batch(100)))
  np.testing.assert_array_equal(y.numpy(), [0, 0, 0, 1, 1, 1, 2, 2, 2])
  expected = np.asarray(Image.open(tmp_path / "train" / "ant" / "0.png"))
  np.testing.assert_array_equal(x[0].numpy(), expected)


def test_resized_info_scales_crop_padding_and_keeps_none():
  from mixmo_tf.data_info import DataInfo
  info = DataInfo("x", 10, (32, 32, 3), 1, 1, (0.5,) * 3, (0.5,) * 3, 4, True)
  assert info.resized(64).crop_padding == 8 and info.resized(64).image_shape == (64, 64, 3)
  assert info.resized(8).crop_padding == 1  # never rounded down to no crop
  no_crop = DataInfo("x", 10, (32, 32, 3), 1, 1, (0.5,) * 3, (0.5,) * 3, 0, False)
  assert no_crop.resized(64).crop_padding == 0  # a dataset without crops gets none


def test_train_subset_is_the_same_fixed_sample_for_every_loader(tmp_path):
  from mixmo_tf.image_folder import subset_indices
  keep = subset_indices(1438, 100)
  assert len(keep) == 100 and np.all(np.diff(keep) > 0)
  np.testing.assert_array_equal(keep, subset_indices(1438, 100))
  full, _, _ = data_lib.load(tiny_config(tmp_path))
  sub, _, info = data_lib.load(tiny_config(tmp_path, train_subset=100))
  x_full = np.stack([x for x, _ in full.as_numpy_iterator()])
  x_sub = np.stack([x for x, _ in sub.as_numpy_iterator()])
  assert info.num_train == 100
  np.testing.assert_array_equal(x_sub, x_full[keep])
  # tf.data sources (TFDS) take the same indices through subset_dataset.
  ds, sub_info = data_lib.subset_dataset(full, dataclasses.replace(info, num_train=1438), 100)
  np.testing.assert_array_equal(np.stack([x for x, _ in ds.as_numpy_iterator()]), x_full[keep])
  assert sub_info.num_train == 100


def test_pillow_and_tensorflow_decoders_give_the_same_pixels(cifar10_folder):
  """The Keras loop decodes folders with pillow (`decode_images`), the TensorFlow pipeline with
  tf.io (`decode_folder`): on the shared CIFAR-10 JPEGs both give the same pixels, bit for bit.
  TensorFlow's default DCT (INTEGER_FAST), which round one used, differs by a few levels on most
  images: the reason `decode_folder` asks for the accurate one."""
  from mixmo_tf.image_folder import decode_folder, decode_images, list_image_folder
  paths, labels, _ = list_image_folder(str(cifar10_folder), "test")
  paths, labels = paths[::50], labels[::50]  # 200 images, 20 of each class.
  ours = decode_images(paths, 32)
  theirs, got_labels = zip(*decode_folder(paths, labels, 32).as_numpy_iterator())
  fast = np.stack([tf.io.decode_image(tf.io.read_file(p), channels=3).numpy() for p in paths])
  assert ours.shape == (200, 32, 32, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, np.stack(theirs))
  assert list(got_labels) == labels
  gap = np.abs(ours.astype(int) - fast)
  assert 0 < gap.max() <= 8 and (gap > 0).mean() > 0.1  # The default really is another decoder.


def test_pillow_decoder_converts_modes_resizes_and_names_a_bad_file(tmp_path):
  from PIL import Image

  from mixmo_tf.image_folder import decode_images
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

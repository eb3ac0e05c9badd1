"""Tiny ImageNet loading from the released layout and the AugMix ops (docs/method.md §9)."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from mixmo_tf.core import tf_augmix as augmix_lib
from mixmo_tf.data import datasets
from mixmo_tf.data.info import DataInfo
from mixmo_tf.data.tiny_imagenet import list_tiny_imagenet
from tests.helpers import tiny_config


def load_tiny_imagenet(data_dir, train_subset=0):
  """The run's dataset for --dataset=tiny_imagenet --data_dir=data_dir."""
  return datasets.load(tiny_config(data_dir, dataset="tiny_imagenet", data_dir=data_dir,
                                   train_subset=train_subset))

# ---------------------------------------------------------------------------------------------
# Tiny ImageNet: a synthetic stand-in in the released tiny-imagenet-200 layout.

# wnid -> solid RGB colour, so that each decoded image tells which class it was written for.
COLOURS = {"n03000003": (220, 30, 110), "n01000001": (30, 200, 60), "n02000002": (128, 128, 128)}
WNIDS_FILE_ORDER = ["n03000003", "n01000001", "n02000002"]  # Deliberately not sorted.
SORTED_WNIDS = sorted(COLOURS)
GRAY_FILE = ("n02000002", "n02000002_1.JPEG")  # Saved as a 1-channel (mode "L") JPEG.
VAL_WNIDS = ["n02000002", "n03000003", "n01000001", "n03000003", "n01000001"]


def _save(path, colour, gray=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if gray:
    Image.new("L", (64, 64), colour[0]).save(path, "JPEG", quality=95)
  else:
    Image.new("RGB", (64, 64), colour).save(path, "JPEG", quality=95)


@pytest.fixture
def tiny_dir(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  root.mkdir()
  (root / "wnids.txt").write_text("\n".join(WNIDS_FILE_ORDER) + "\n")
  for n, wnid in enumerate(WNIDS_FILE_ORDER):
    for i in range(2 + n % 2):  # 2 or 3 images per class.
      name = f"{wnid}_{i}.JPEG"
      _save(str(root / "train" / wnid / "images" / name), COLOURS[wnid],
            gray=(wnid, name) == GRAY_FILE)
    (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # Present in the release.
  lines = []
  for i, wnid in enumerate(VAL_WNIDS):
    _save(str(root / "val" / "images" / f"val_{i}.JPEG"), COLOURS[wnid])
    lines.append(f"val_{i}.JPEG\t{wnid}\t0\t3\t60\t61")
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  return root


def _label_from_colour(image):
  mean = image.reshape(-1, 3).mean(axis=0)
  distances = [np.abs(mean - np.array(COLOURS[w])).max() for w in SORTED_WNIDS]
  assert min(distances) < 12, mean
  return int(np.argmin(distances))


def test_tiny_imagenet_loads_both_splits_with_sorted_wnid_labels(tiny_dir):
  train, test, info = load_tiny_imagenet(str(tiny_dir))
  assert isinstance(info, DataInfo)
  assert info.name == "tiny_imagenet" and info.num_classes == 3
  assert info.image_shape == (64, 64, 3)
  assert info.class_names == tuple(SORTED_WNIDS)
  assert (info.mean, info.std) == ((0.5,) * 3, (0.5,) * 3)
  assert info.crop_padding == 4 and info.flip
  assert (info.num_train, info.num_test) == (7, 5)
  train_items = list(zip(train.images, train.labels))
  test_items = list(zip(test.images, test.labels))
  assert (len(train_items), len(test_items)) == (7, 5)
  for image, label in train_items + test_items:
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert label.dtype == np.int32
    assert _label_from_colour(image) == label
  expected_test = [SORTED_WNIDS.index(w) for w in VAL_WNIDS]
  assert [int(y) for _, y in test_items] == expected_test  # annotation-file order
  assert sorted(int(y) for _, y in train_items) == [0, 0, 0, 1, 1, 2, 2]


def test_tiny_imagenet_grayscale_jpeg_becomes_rgb(tiny_dir):
  train_paths, _, _, _, _ = list_tiny_imagenet(str(tiny_dir))
  gray_path = str(tiny_dir / "train" / GRAY_FILE[0] / "images" / GRAY_FILE[1])
  assert Image.open(gray_path).mode == "L"
  train, _, _ = load_tiny_imagenet(str(tiny_dir))
  image, label = train.images[train_paths.index(gray_path)], train.labels[
      train_paths.index(gray_path)]
  assert image.shape == (64, 64, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 1])
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  assert label == SORTED_WNIDS.index(GRAY_FILE[0])


def test_tiny_imagenet_train_subset_is_fixed(tiny_dir):
  first, _, info = load_tiny_imagenet(str(tiny_dir), train_subset=4)
  second, _, _ = load_tiny_imagenet(str(tiny_dir), train_subset=4)
  assert info.num_train == 4 and info.num_test == 5
  assert len(first.labels) == 4
  np.testing.assert_array_equal(first.images, second.images)
  assert list(first.labels) == sorted(first.labels)  # indices kept in sorted order


def test_tiny_imagenet_missing_annotation_file(tiny_dir):
  os.remove(tiny_dir / "val" / "val_annotations.txt")
  with pytest.raises(ValueError, match="val_annotations.txt"):
    load_tiny_imagenet(str(tiny_dir))


def test_tiny_imagenet_unknown_wnid_in_annotations(tiny_dir):
  path = tiny_dir / "val" / "val_annotations.txt"
  path.write_text(path.read_text() + "val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
  with pytest.raises(ValueError, match=r"n09999999.*not in wnids.txt") as error:
    load_tiny_imagenet(str(tiny_dir))
  assert "line 6" in str(error.value) and "val_annotations.txt" in str(error.value)


def test_tiny_imagenet_other_layout_errors(tiny_dir):
  (tiny_dir / "val" / "images" / "val_3.JPEG").unlink()
  with pytest.raises(ValueError, match="val_3.JPEG"):
    list_tiny_imagenet(str(tiny_dir))
  for f in (tiny_dir / "train" / "n01000001" / "images").iterdir():
    f.unlink()
  (tiny_dir / "train" / "n01000001" / "images").rmdir()
  with pytest.raises(ValueError, match="n01000001"):
    list_tiny_imagenet(str(tiny_dir))
  (tiny_dir / "wnids.txt").unlink()
  with pytest.raises(ValueError, match="wnids.txt"):
    list_tiny_imagenet(str(tiny_dir))


# ---------------------------------------------------------------------------------------------
# AugMix ops, one at a time.


def _random_image(height=37, width=45, seed=0):
  levels = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)
  return levels, tf.constant(levels / 255.0, tf.float32)


def _levels(image):
  return np.round(np.asarray(image) * 255.0).astype(np.int64)


def _ramp():
  """Every uint8 level once per channel: [16, 16, 3]."""
  levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
  levels = np.stack([levels, levels[::-1], levels.T], axis=-1)
  return levels, tf.constant(levels / 255.0, tf.float32)


def test_identity_and_invert():
  _, x = _random_image()
  np.testing.assert_array_equal(augmix_lib.identity(x).numpy(), x.numpy())
  np.testing.assert_allclose(augmix_lib.invert(x).numpy(), 1.0 - x.numpy(), atol=1e-7)


def test_posterize_keeps_top_four_bits():
  levels, x = _ramp()
  out = augmix_lib.posterize(x, 4)
  np.testing.assert_array_equal(_levels(out), levels.astype(np.int64) & 0xF0)
  with pytest.raises(ValueError, match="9"):
    augmix_lib.posterize(x, 9)


def test_solarize_flips_only_pixels_above_threshold():
  levels, x = _ramp()
  out = augmix_lib.solarize(x, 25.6).numpy()
  above = levels >= 26  # threshold 25.6 of 256 (docs/method.md §9)
  assert above.sum() == 3 * (256 - 26)
  np.testing.assert_allclose(out[above], 1.0 - x.numpy()[above], atol=1e-7)
  np.testing.assert_array_equal(out[~above], x.numpy()[~above])


def test_equalize_spreads_a_low_contrast_image_uniformly():
  rng = np.random.default_rng(1)
  levels = rng.integers(100, 132, (64, 64, 3)).astype(np.uint8)  # 32 levels out of 256
  out = augmix_lib.equalize(tf.constant(levels / 255.0, tf.float32)).numpy()
  assert out.shape == levels.shape and out.min() >= 0.0 and out.max() <= 1.0
  for c in range(3):
    values = out[..., c].ravel()
    assert values.min() == 0.0 and values.max() >= 240 / 255
    # Uniform output: each level v is proportional to the fraction F of pixels below it. PIL
    # scales by 255 / floor((N - count of the top level) / 255), a little above 1, hence the fit;
    # the top level is clipped to 1 and left out.
    levels_out = np.unique(values)[:-1]
    below = np.array([(values < v).mean() for v in levels_out])
    slope = (below @ levels_out) / (below @ below)
    assert 1.0 <= slope <= 1.1, slope
    assert np.abs(slope * below - levels_out).max() < 1.5 / 255
  flat = np.full((8, 8, 3), 128 / 255, np.float32)  # one level: left unchanged
  np.testing.assert_array_equal(augmix_lib.equalize(flat).numpy(), flat)


def _marked(height, width, row, col):
  image = np.zeros((height, width, 3), np.float32)
  image[row - 1:row + 2, col - 1:col + 2] = 1.0  # 3x3 block centred on (row, col)
  return image


def _centroid(image):
  rows, cols = np.nonzero(image[..., 0] > 0.5)
  return rows.mean(), cols.mean()


@pytest.mark.parametrize("degrees", [3.0, -3.0])
def test_rotate_moves_a_far_pixel_where_the_rotation_formula_predicts(degrees):
  size, row, col = 128, 64, 123  # ~59 pixels right of the centre: moves ~3 pixels.
  out = augmix_lib.rotate(_marked(size, size, row, col), degrees).numpy()
  assert out.shape == (size, size, 3)
  # Counter-clockwise on screen (y down) about the centre (size/2, size/2) in pixel-corner
  # coordinates, where the pixel (row, col) has its centre at (col + 0.5, row + 0.5).
  theta = math.radians(degrees)
  dx, dy = col + 0.5 - size / 2, row + 0.5 - size / 2
  expected_col = size / 2 + dx * math.cos(theta) + dy * math.sin(theta) - 0.5
  expected_row = size / 2 - dx * math.sin(theta) + dy * math.cos(theta) - 0.5
  got_row, got_col = _centroid(out)
  assert abs(got_row - expected_row) <= 1 and abs(got_col - expected_col) <= 1
  assert abs(got_row - row) >= 2  # it did move, in the predicted direction
  assert np.sign(row - got_row) == np.sign(degrees)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_translate_moves_by_the_reference_fraction(sign):
  size, row, col = 64, 20, 30
  shift = round(0.045 * size)  # 2.88 -> 3 pixels (docs/method.md §9: 4.5% of the size)
  image = _marked(size, size, row, col)
  got = _centroid(augmix_lib.translate_x(image, sign * 0.045).numpy())
  assert got == (row, col - sign * shift)  # Positive fraction: content moves left (as PIL).
  got = _centroid(augmix_lib.translate_y(image, sign * 0.045).numpy())
  assert got == (row - sign * shift, col)


def test_shear_keeps_shape_and_range_and_shears_rows():
  _, x = _random_image(64, 64)
  for op in (augmix_lib.shear_x, augmix_lib.shear_y):
    out = op(x, 0.03).numpy()
    assert out.shape == (64, 64, 3) and out.min() >= 0.0 and out.max() <= 1.0
  out = augmix_lib.shear_x(x, 0.3).numpy()
  np.testing.assert_array_equal(out[0, :-1], x.numpy()[0, :-1])  # top row: shift 0.15 -> 0
  np.testing.assert_array_equal(out[63, :-19], x.numpy()[63, 19:])  # 0.3 * 63.5 = 19.05


@pytest.mark.parametrize("name", ["equalize", "posterize", "solarize", "invert", "rotate",
                                  "shear_x", "shear_y", "translate_x", "translate_y"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ops_match_the_pil_operations_of_off(name, sign):
  """At severity 3 each op reproduces OFF's PIL op (rotation: up to rare rounding ties)."""
  levels, x = _random_image()
  pil = Image.fromarray(levels)
  w, h = pil.size
  reference = {
      "equalize": lambda: ImageOps.equalize(pil),
      "posterize": lambda: ImageOps.posterize(pil, 4),
      "solarize": lambda: ImageOps.solarize(pil, 25.6),
      "invert": lambda: ImageOps.invert(pil),
      "rotate": lambda: pil.rotate(sign * 3.0),
      "shear_x": lambda: pil.transform(pil.size, Image.AFFINE, (1, sign * 0.03, 0, 0, 1, 0)),
      "shear_y": lambda: pil.transform(pil.size, Image.AFFINE, (1, 0, 0, sign * 0.03, 1, 0)),
      "translate_x": lambda: pil.transform(pil.size, Image.AFFINE,
                                           (1, 0, sign * 0.045 * w, 0, 1, 0)),
      "translate_y": lambda: pil.transform(pil.size, Image.AFFINE,
                                           (1, 0, 0, 0, 1, sign * 0.045 * h)),
  }[name]()
  ours = _levels(augmix_lib.OPS[name](x, 0.1, tf.constant(sign)))
  agreement = (ours == np.asarray(reference)).mean()
  assert agreement >= (0.995 if name == "rotate" else 1.0), agreement


def test_ops_registry_is_the_reference_op_set():
  assert set(augmix_lib.OPS) == {"identity", "equalize", "posterize", "rotate", "solarize",
                                 "shear_x", "shear_y", "translate_x", "translate_y", "invert"}


# ---------------------------------------------------------------------------------------------
# The AugMix blend.


def test_augmix_is_seeded_and_stays_in_range():
  levels, _ = _random_image(32, 32)
  image = tf.constant(levels)
  a = augmix_lib.augmix(image, tf.constant([1, 2], tf.int32))
  b = augmix_lib.augmix(image, tf.constant([1, 2], tf.int32))
  c = augmix_lib.augmix(image, tf.constant([3, 4], tf.int32))
  assert a.shape == image.shape and a.dtype == tf.float32
  for out in (a, c):
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert np.abs(a.numpy() - c.numpy()).max() > 1e-3
  with pytest.raises(ValueError, match="31"):
    augmix_lib.augmix(image, tf.constant([1, 2]), severity=31)


def test_augmix_in_dataset_map_with_per_example_seeds():
  levels, _ = _random_image(32, 32)
  images = np.stack([levels, levels[::-1], levels, levels])
  seeds = np.array([[0, 1], [0, 2], [0, 3], [0, 1]], np.int32)
  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      augmix_lib.augmix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  assert ds.element_spec.shape == (32, 32, 3)
  outs = list(ds.as_numpy_iterator())
  assert len(outs) == 4
  np.testing.assert_array_equal(outs[0], outs[3])  # same image, same seed
  assert np.abs(outs[0] - outs[2]).max() > 1e-3  # same image, another seed
  # The graph (tf.data) result equals the eager one for the same seed.
  np.testing.assert_array_equal(outs[1], augmix_lib.augmix(images[1], seeds[1]).numpy())

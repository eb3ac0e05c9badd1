"""In-memory NumPy datasets (no TensorFlow): what the Keras-native loop trains on, on any backend.

`load_arrays(config)` returns uint8 images [N, H, W, 3] and int32 labels for the embedded digits
and for class-folder image trees (decoded once with pillow, `image_folder.decode_images`); the
TensorFlow input pipeline (`mixmo_tf.data`) wraps the same arrays, so both loops see the same
pixels. TFDS datasets and Tiny ImageNet stay TensorFlow-only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mixmo_tf.data_info import DataInfo
from mixmo_tf.image_folder import decode_images, list_image_folder, probe_size, subset_indices

# The official CIFAR normalisation, used for CIFAR-10 and CIFAR-100 (docs/method.md §9).
CIFAR_MEAN = (0.49137, 0.48235, 0.44667)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
ARRAY_DATASETS = ("digits", "folder")


class Arrays(NamedTuple):
  """A dataset held in memory: raw uint8 images and int32 labels of both splits, and its info."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  info: DataInfo


def load_arrays(config, backend: str = "this backend") -> Arrays:
  """The digits or a class-folder tree as `Arrays` (`config.train_subset`, `config.image_size`
  applied); ValueError naming the dataset for those that need TensorFlow."""
  if config.dataset == "digits":
    arrays = digits_arrays(config.train_subset)
  elif config.dataset == "folder":
    arrays = folder_arrays(config.data_dir, config.train_subset, config.image_size)
  else:
    raise ValueError(
        f"--dataset={config.dataset} reads TensorFlow Datasets and is available on the "
        f"TensorFlow backend only (KERAS_BACKEND={backend}). On {backend}, use --dataset=digits "
        f"or --dataset=folder --data_dir=<root with train/<class>/ and test/<class>/ images> "
        f"(e.g. the CIFAR-10 JPEGs).")
  size = config.image_size
  if size and arrays.info.image_shape[:2] != (size, size):
    arrays = arrays._replace(train_images=resize(arrays.train_images, size),
                             test_images=resize(arrays.test_images, size),
                             info=arrays.info.resized(size))
  return arrays


def resize(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
  """uint8 [N, h, w, 3] -> [N, size, size, 3]: bilinear without antialiasing, rounded (the rule of
  tf.image.resize, which the TensorFlow path used before)."""
  import keras
  out = []
  for start in range(0, len(images), chunk):
    x = keras.ops.image.resize(images[start:start + chunk].astype(np.float32), (size, size),
                               interpolation="bilinear", antialias=False)
    out.append(np.clip(np.round(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8))
  return np.concatenate(out) if out else np.zeros((0, size, size, images.shape[-1]), np.uint8)


def digits_arrays(train_subset: int = 0) -> Arrays:
  """scikit-learn's 1,797 real 8x8 handwritten digits (embedded, no network), as RGB uint8.

  Fixed stratified split: 20% of each class (a seed-0 permutation) is the test set; the mean and
  std are those of the training images.
  """
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
  images = np.repeat(images[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int32)
  rng = np.random.RandomState(0)
  test_mask = np.zeros(len(labels), bool)
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(labels == c))
    test_mask[idx[:int(round(0.2 * len(idx)))]] = True
  train_x, train_y = images[~test_mask], labels[~test_mask]
  keep = subset_indices(len(train_y), train_subset)
  train_x, train_y = train_x[keep], train_y[keep]
  mean = tuple(float(m) for m in (train_x / 255.0).mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in (train_x / 255.0).std(axis=(0, 1, 2)))
  info = DataInfo("digits", 10, (8, 8, 3), len(train_y), int(test_mask.sum()), mean, std,
                  crop_padding=1, flip=False, class_names=tuple(str(i) for i in range(10)))
  return Arrays(train_x, train_y, images[test_mask], labels[test_mask], info)


def folder_listing(root: str, train_subset: int = 0, image_size: int = 0):
  """`root/train/<class>/*` and `root/test/<class>/*` listed (class index = sorted folder name):
  (train_paths, train_labels, test_paths, test_labels, info). ValueError naming what is wrong
  (missing split, differing classes, an unreadable first image)."""
  train_paths, train_labels, classes = list_image_folder(root, "train")
  test_paths, test_labels, test_classes = list_image_folder(root, "test")
  if classes != test_classes:
    only_train = sorted(set(classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(classes))
    raise ValueError(f"Folder dataset {root!r}: train and test classes differ "
                     f"(only in train: {only_train}; only in test: {only_test}).")
  keep = subset_indices(len(train_paths), train_subset)
  train_paths = [train_paths[i] for i in keep]
  train_labels = np.asarray(train_labels, np.int32)[keep]
  size = image_size or probe_size(train_paths[0])
  info = DataInfo("folder", len(classes), (size, size, 3), len(train_paths), len(test_paths),
                  CIFAR_MEAN, CIFAR_STD, crop_padding=4 * size // 32, flip=True,
                  class_names=tuple(classes))
  return train_paths, train_labels, test_paths, np.asarray(test_labels, np.int32), info


def folder_arrays(root: str, train_subset: int = 0, image_size: int = 0) -> Arrays:
  """A class-folder tree (`folder_listing`) decoded into memory with pillow."""
  train_paths, train_labels, test_paths, test_labels, info = folder_listing(
      root, train_subset, image_size)
  size = info.image_shape[0]
  return Arrays(decode_images(train_paths, size), train_labels, decode_images(test_paths, size),
                test_labels, info)

"""The datasets of a run as NumPy examples, on every backend: `load(config) -> Dataset`.

Every dataset becomes uint8 images and int32 labels: the embedded digits, class-folder trees,
ImageNet-layout folders and the released Tiny ImageNet folder are read on every backend (decoded
once into memory with tf.io where TensorFlow is the backend, pillow elsewhere: the same pixels; or
streamed, decoded per batch, when they would not fit: --data_in_memory); CIFAR-10/100 are read
from TensorFlow Datasets, which needs TensorFlow importable (any backend). Training order,
repetition and augmentation happen later, from the run's seed (`data.batches`, `core.step`),
identically on both engines.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, NamedTuple, Sequence, Tuple

import numpy as np

from mixmo_tf import runtime
from mixmo_tf.data.errors import DatasetUnavailableError  # noqa: F401  (re-exported)
from mixmo_tf.data.images import decode_images, list_image_folder, probe_size, resize
from mixmo_tf.data.images import subset_indices
from mixmo_tf.data.info import DataInfo

# The official CIFAR normalisation, used for CIFAR-10 and CIFAR-100 (docs/method.md §9): the
# official code's exact values (125.3, 123.0, 113.9) / 255, not a rounding of them.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# ImageNet (docs/method.md §9.1): 224 px crops, the torchvision / UB statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
# Read through TensorFlow Datasets (TensorFlow needed).
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")
DATASETS = ("digits", "folder", "tiny_imagenet", "imagenet") + TFDS_DATASETS
IN_MEMORY = ("auto", "true", "false")
# --data_in_memory=auto streams a training set whose decoded size exceeds this share of the RAM.
MEMORY_SHARE = 0.25


def tfds_importable() -> bool:
  """Whether TensorFlow Datasets (and so TensorFlow) can be imported in this process."""
  return runtime.tensorflow_importable("tensorflow_datasets")


class InMemory:
  """Examples held in memory: uint8 images [N, H, W, 3] and int32 labels [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images = np.asarray(images)
    self.labels = np.asarray(labels).astype(np.int32)
    if self.images.ndim != 4 or len(self.images) != len(self.labels):
      raise ValueError(f"images must be [N, H, W, C] with one label each, got images of shape "
                       f"{self.images.shape} and {len(self.labels)} labels.")

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices, epoch=None) -> Tuple[np.ndarray, np.ndarray]:
    """(images, labels) at `indices` (`epoch` is for sources that draw per epoch)."""
    del epoch
    return self.images[indices], self.labels[indices]

  def batches(self, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(images, labels) in order, every example once (the last batch may be smaller)."""
    for start in range(0, len(self), batch_size):
      yield self.images[start:start + batch_size], self.labels[start:start + batch_size]


class Dataset(NamedTuple):
  """A run's data: the training and test examples, and what the rest needs to know of them."""
  train: InMemory
  test: InMemory
  info: DataInfo


def decode(paths: Sequence[str], image_size: int) -> np.ndarray:
  """Image files -> uint8 [N, S, S, 3]: tf.io on the TensorFlow backend (2x faster), else pillow."""
  import keras
  if keras.backend.backend() == "tensorflow":
    from mixmo_tf.data.tf_images import decode_images_tf
    return decode_images_tf(paths, image_size)
  return decode_images(paths, image_size)


def load(config) -> Dataset:
  """The run's Dataset: `config.train_subset` keeps the same fixed random training subset for
  every dataset (`images.subset_indices`), `config.image_size` resizes both splits."""
  loaders = {"digits": _digits, "folder": _folder, "tiny_imagenet": _tiny_imagenet,
             "imagenet": _imagenet, "cifar10": _tfds, "cifar100": _tfds,
             "imagenet2012": _imagenet2012}
  if config.dataset not in loaders:
    raise ValueError(f"--dataset={config.dataset!r} is not valid; expected one of "
                     f"{', '.join(loaders)}.")
  data = loaders[config.dataset](config)
  size = config.image_size
  if (size and data.info.image_shape[:2] != (size, size)
      and isinstance(data.train, InMemory)):
    data = Dataset(InMemory(resize(data.train.images, size), data.train.labels),
                   InMemory(resize(data.test.images, size), data.test.labels),
                   data.info.resized(size))
  return data


def _subset(images, labels, info: DataInfo, subset: int):
  keep = subset_indices(len(labels), subset)
  return InMemory(images[keep], labels[keep]), dataclasses.replace(info, num_train=len(keep))


def digits_dataset(train_subset: int = 0) -> Dataset:
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
  keep = subset_indices(int((~test_mask).sum()), train_subset)
  train_x, train_y = images[~test_mask][keep], labels[~test_mask][keep]
  mean = tuple(float(m) for m in (train_x / 255.0).mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in (train_x / 255.0).std(axis=(0, 1, 2)))
  info = DataInfo("digits", 10, (8, 8, 3), len(train_y), int(test_mask.sum()), mean, std,
                  crop_padding=1, flip=False, class_names=tuple(str(i) for i in range(10)))
  return Dataset(InMemory(train_x, train_y), InMemory(images[test_mask], labels[test_mask]), info)


def _digits(config) -> Dataset:
  return digits_dataset(config.train_subset)


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


def physical_memory() -> int:
  """Bytes of RAM of this machine (0 where unknown)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 0


def keep_in_memory(setting: str, num_images: int, size: int) -> bool:
  """--data_in_memory: true / false, or auto: in memory unless the decoded training set would
  take more than MEMORY_SHARE of the RAM (CIFAR-10's 150 MB stays; ImageNet's 190 GB streams)."""
  if setting not in IN_MEMORY:
    raise ValueError(f"--data_in_memory={setting!r} is not valid; expected one of "
                     f"{', '.join(IN_MEMORY)}.")
  if setting != "auto":
    return setting == "true"
  memory = physical_memory()
  return not memory or num_images * size * size * 3 <= MEMORY_SHARE * memory


def _files(config, train_paths, train_labels, test_paths, test_labels, info,
           transform="resize") -> Dataset:
  """Image files, decoded now into memory or streamed per batch (`keep_in_memory`)."""
  from mixmo_tf.data.image_files import ImageFiles
  size = info.image_shape[0]
  if transform == "resize" and keep_in_memory(config.data_in_memory, len(train_paths), size):
    return Dataset(InMemory(decode(train_paths, size), train_labels),
                   InMemory(decode(test_paths, size), test_labels), info)
  return Dataset(ImageFiles(train_paths, train_labels, size, transform, True, config.seed),
                 ImageFiles(test_paths, test_labels, size, transform, False), info)


def _folder(config) -> Dataset:
  return _files(config, *folder_listing(config.data_dir, config.train_subset, config.image_size))


def _tiny_imagenet(config) -> Dataset:
  from mixmo_tf.data import tiny_imagenet
  return _files(config, *tiny_imagenet.listing(config.data_dir, config.train_subset))


def _imagenet(config) -> Dataset:
  """An ImageNet-layout folder: root/train/<wnid>/*, root/val/<wnid>/* (or root/test/<wnid>/*),
  streamed with the standard ResNet preprocessing at --image_size (default 224)."""
  train_paths, train_labels, classes = list_image_folder(config.data_dir, "train")
  test_split = "val" if os.path.isdir(os.path.join(config.data_dir, "val")) else "test"
  test_paths, test_labels, test_classes = list_image_folder(config.data_dir, test_split)
  if classes != test_classes:
    raise ValueError(f"ImageNet folder {config.data_dir!r}: train and {test_split} classes "
                     f"differ ({len(classes)} vs {len(test_classes)} folders).")
  keep = subset_indices(len(train_paths), config.train_subset)
  size = config.image_size or IMAGENET_SIZE
  info = DataInfo("imagenet", len(classes), (size, size, 3), len(keep), len(test_paths),
                  IMAGENET_MEAN, IMAGENET_STD, crop_padding=0, flip=True,
                  class_names=tuple(classes), loader_crop="imagenet")
  return _files(config, [train_paths[i] for i in keep], np.asarray(train_labels)[keep],
                test_paths, test_labels, info, transform="imagenet")


def _tfds(config) -> Dataset:
  from mixmo_tf.data import tfds  # Prepared once under --data_dir, never re-downloaded.
  train_x, train_y, num_classes = tfds.load_split(config.dataset, "train", config.data_dir)
  test_x, test_y, _ = tfds.load_split(config.dataset, "test", config.data_dir)
  info = DataInfo(config.dataset, num_classes, (32, 32, 3), len(train_y), len(test_y),
                  CIFAR_MEAN, CIFAR_STD, crop_padding=4, flip=True)
  train, info = _subset(train_x, train_y, info, config.train_subset)
  return Dataset(train, InMemory(test_x, test_y), info)


def _imagenet2012(config) -> Dataset:
  from mixmo_tf.data import tfds  # Prepared once under --data_dir from its manual downloads.
  return Dataset(*tfds.imagenet2012(config, config.image_size or IMAGENET_SIZE, IMAGENET_MEAN,
                                    IMAGENET_STD))

"""Datasets, train batches and per-copy augmentation (docs/method.md §6, §9).

Datasets yield raw `(image uint8 [H, W, 3], label int32)` pairs; augmentation (pad-crop, flip) and
normalisation run inside the train step on the device, per copy, from stateless seeds, so that each
of the b repetitions of an example is augmented independently (docs/method.md §6.4) and a resumed
run replays the same randomness.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

from mixmo_tf.augment import normalize, random_crop_flip
from mixmo_tf.data_info import DataInfo
from mixmo_tf.image_folder import decode_folder, list_image_folder, probe_size, subset_indices

AUTOTUNE = tf.data.AUTOTUNE

# The official CIFAR normalisation, used for CIFAR-10 and CIFAR-100 (docs/method.md §9).
CIFAR_MEAN = (0.49137, 0.48235, 0.44667)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

__all__ = ["DataInfo", "load", "train_batches", "steps_per_epoch", "random_crop_flip",
           "normalize", "subset_dataset"]


def load(config) -> Tuple[tf.data.Dataset, tf.data.Dataset, DataInfo]:
  """Returns (train, test, info) for `config.dataset`; both datasets are cached, unbatched.

  `config.train_subset` keeps the same fixed random subset of the training set for every dataset
  (`image_folder.subset_indices`); `config.image_size` resizes both splits.
  """
  loaders = {"digits": _load_digits, "folder": _load_folder, "cifar10": _load_tfds,
             "cifar100": _load_tfds, "tiny_imagenet": _load_tiny_imagenet}
  train, test, info = loaders[config.dataset](config)
  if config.dataset in ("cifar10", "cifar100"):  # The other loaders subset their file lists.
    train, info = subset_dataset(train, info, config.train_subset)
  size = config.image_size
  if size and info.image_shape[:2] != (size, size):
    resize = lambda x, y: (tf.cast(tf.clip_by_value(tf.round(
        tf.image.resize(x, [size, size])), 0, 255), tf.uint8), y)
    train, test = train.map(resize), test.map(resize)
    info = info.resized(size)
  return train.cache(), test.cache(), info


def subset_dataset(ds: tf.data.Dataset, info: DataInfo, subset: int):
  """The fixed training subset of a tf.data source (the loaders that list files subset the list
  instead, with the same indices)."""
  keep = subset_indices(info.num_train, subset)
  if len(keep) == info.num_train:
    return ds, info
  selected = np.zeros(info.num_train, bool)
  selected[keep] = True
  selected = tf.constant(selected)
  ds = ds.enumerate().filter(lambda i, example: tf.gather(selected, i)).map(lambda i, ex: ex)
  return ds, dataclasses.replace(info, num_train=len(keep))


# ---------------------------------------------------------------------------------------------
# Embedded digits: scikit-learn's 1,797 real 8x8 handwritten digits, no network needed.


def _load_digits(config):
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
  images = np.repeat(images[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int32)
  # Fixed stratified split: 20% of each class (by a seed-0 permutation) is the test set.
  rng = np.random.RandomState(0)
  test_mask = np.zeros(len(labels), bool)
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(labels == c))
    test_mask[idx[:int(round(0.2 * len(idx)))]] = True
  train_x, train_y = images[~test_mask], labels[~test_mask]
  keep = subset_indices(len(train_y), config.train_subset)
  train_x, train_y = train_x[keep], train_y[keep]
  mean = tuple(float(m) for m in (train_x / 255.0).mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in (train_x / 255.0).std(axis=(0, 1, 2)))
  info = DataInfo("digits", 10, (8, 8, 3), len(train_y), int(test_mask.sum()), mean, std,
                  crop_padding=1, flip=False, class_names=tuple(str(i) for i in range(10)))
  return (tf.data.Dataset.from_tensor_slices((train_x, train_y)),
          tf.data.Dataset.from_tensor_slices((images[test_mask], labels[test_mask])), info)


# ---------------------------------------------------------------------------------------------
# Class-folder image trees: root/train/<class>/*, root/test/<class>/*; class index = sorted name.


def _load_folder(config):
  train_paths, train_labels, classes = list_image_folder(config.data_dir, "train")
  test_paths, test_labels, test_classes = list_image_folder(config.data_dir, "test")
  if classes != test_classes:
    only_train = sorted(set(classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(classes))
    raise ValueError(f"Folder dataset {config.data_dir!r}: train and test classes differ "
                     f"(only in train: {only_train}; only in test: {only_test}).")
  keep = subset_indices(len(train_paths), config.train_subset)
  train_paths = [train_paths[i] for i in keep]
  train_labels = [train_labels[i] for i in keep]
  size = config.image_size or probe_size(train_paths[0])
  info = DataInfo("folder", len(classes), (size, size, 3), len(train_paths), len(test_paths),
                  CIFAR_MEAN, CIFAR_STD, crop_padding=4 * size // 32, flip=True,
                  class_names=tuple(classes))
  return (decode_folder(train_paths, train_labels, size),
          decode_folder(test_paths, test_labels, size), info)


# ---------------------------------------------------------------------------------------------
# TFDS CIFAR-10 / CIFAR-100.


def _load_tfds(config):
  from mixmo_tf import tfds_data  # Prepared once under --data_dir, never re-downloaded.
  train, num_train, num_classes = tfds_data.load_split(config.dataset, "train", config.data_dir)
  test, num_test, _ = tfds_data.load_split(config.dataset, "test", config.data_dir)
  info = DataInfo(config.dataset, num_classes, (32, 32, 3), num_train, num_test, CIFAR_MEAN,
                  CIFAR_STD, crop_padding=4, flip=True)
  return train, test, info


def _load_tiny_imagenet(config):
  from mixmo_tf.tiny_imagenet import load_tiny_imagenet
  return load_tiny_imagenet(config.data_dir, config.train_subset)


# ---------------------------------------------------------------------------------------------
# Batching, augmentation, batch repetition.


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
  """A distinct, reproducible seed per (run seed, 0-based epoch, stream): 0 data order, 1 MSDA
  partners (distinct from every other run seed's streams). AugMix draws its seeds in the train
  step, after the crop (docs/method.md §9)."""
  return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def train_batches(train: tf.data.Dataset, info: DataInfo, unique_batch_size: int, seed: int,
                  epoch: int, skip_batches: int = 0,
                  partner_batch_size: int = 0) -> tf.data.Dataset:
  """One epoch of shuffled batches of B/b unique raw examples (incomplete last batch dropped).

  With `partner_batch_size`, each element also carries that many MSDA partners drawn from the
  whole training set by an independent shuffle (docs/method.md §12.14): ((x, y), (x_partner, y_partner)).
  Images stay raw uint8: crop/flip and AugMix run per copy in the train step (docs/method.md §9).
  """
  ds = train.shuffle(info.num_train, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
  ds = ds.batch(unique_batch_size, drop_remainder=True)
  if partner_batch_size:
    partners = train.shuffle(info.num_train, seed=epoch_seed(seed, epoch, 1),
                             reshuffle_each_iteration=True).repeat()
    ds = tf.data.Dataset.zip(ds, partners.batch(partner_batch_size, drop_remainder=True))
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(AUTOTUNE)


def steps_per_epoch(info: DataInfo, unique_batch_size: int) -> int:
  """Steps per pass over the unique data: b times the b = 1 count (docs/method.md §6.6)."""
  return info.num_train // unique_batch_size

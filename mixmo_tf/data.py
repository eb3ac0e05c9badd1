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

from mixmo_tf import arrays as arrays_lib
from mixmo_tf.arrays import CIFAR_MEAN, CIFAR_STD
from mixmo_tf.augment import normalize, random_crop_flip
from mixmo_tf.data_info import DataInfo
from mixmo_tf.image_folder import decode_folder, subset_indices

AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "DataInfo", "load", "train_batches", "steps_per_epoch", "random_crop_flip",
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
# The embedded digits and class-folder trees, listed as every backend lists them (`arrays`).


def _from_arrays(arrays) -> Tuple[tf.data.Dataset, tf.data.Dataset, DataInfo]:
  return (tf.data.Dataset.from_tensor_slices((arrays.train_images, arrays.train_labels)),
          tf.data.Dataset.from_tensor_slices((arrays.test_images, arrays.test_labels)),
          arrays.info)


def _load_digits(config):
  return _from_arrays(arrays_lib.digits_arrays(config.train_subset))


def _load_folder(config):
  train_paths, train_labels, test_paths, test_labels, info = arrays_lib.folder_listing(
      config.data_dir, config.train_subset, config.image_size)
  size = info.image_shape[0]
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

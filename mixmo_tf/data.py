"""Datasets, augmentation and MixMo batch repetition (REFERENCE 6 and 9).

Datasets yield raw `(image uint8 [H, W, 3], label int32)` pairs; augmentation (pad-crop, flip) and
normalisation run inside the train step on the device, per copy, from stateless seeds, so that each
of the b repetitions of an example is augmented independently (REFERENCE 6.4) and a resumed run
replays the same randomness.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# OFF's CIFAR normalisation, used for CIFAR-10 and CIFAR-100 (REFERENCE 9).
CIFAR_MEAN = (0.49137, 0.48235, 0.44667)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the driver needs to know about a dataset."""
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  num_train: int
  num_test: int
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  crop_padding: int  # Random crop after zero padding by this many pixels (0: no crop).
  flip: bool  # Random horizontal flips.
  class_names: Tuple[str, ...] = ()


def load(config) -> Tuple[tf.data.Dataset, tf.data.Dataset, DataInfo]:
  """Returns (train, test, info) for `config.dataset`; both datasets are cached, unbatched."""
  loaders = {"digits": _load_digits, "folder": _load_folder, "cifar10": _load_tfds,
             "cifar100": _load_tfds, "tiny_imagenet": _load_tiny_imagenet}
  train, test, info = loaders[config.dataset](config)
  size = config.image_size
  if size and info.image_shape[:2] != (size, size):
    resize = lambda x, y: (tf.cast(tf.clip_by_value(tf.round(
        tf.image.resize(x, [size, size])), 0, 255), tf.uint8), y)
    train, test = train.map(resize), test.map(resize)
    info = dataclasses.replace(info, image_shape=(size, size, 3),
                               crop_padding=max(1, info.crop_padding * size // info.image_shape[0]))
  if config.train_subset and config.train_subset < info.num_train:
    train = train.take(config.train_subset)
    info = dataclasses.replace(info, num_train=config.train_subset)
  return train.cache(), test.cache(), info


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
  train_x, train_y = _maybe_subset_arrays(train_x, train_y, config.train_subset)
  mean = tuple(float(m) for m in (train_x / 255.0).mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in (train_x / 255.0).std(axis=(0, 1, 2)))
  info = DataInfo("digits", 10, (8, 8, 3), len(train_y), int(test_mask.sum()), mean, std,
                  crop_padding=1, flip=False, class_names=tuple(str(i) for i in range(10)))
  return (tf.data.Dataset.from_tensor_slices((train_x, train_y)),
          tf.data.Dataset.from_tensor_slices((images[test_mask], labels[test_mask])), info)


def _maybe_subset_arrays(x, y, subset):
  if subset and subset < len(y):
    keep = np.random.RandomState(0).permutation(len(y))[:subset]
    return x[np.sort(keep)], y[np.sort(keep)]
  return x, y


# ---------------------------------------------------------------------------------------------
# Class-folder image trees: root/train/<class>/*, root/test/<class>/*; class index = sorted name.


def list_image_folder(root: str, split: str) -> Tuple[List[str], List[int], List[str]]:
  """Lists `root/split/<class>/<image>` files; raises ValueError naming what is wrong."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise ValueError(f"Folder dataset {root!r} has no {split!r} directory ({split_dir}).")
  classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
  if not classes:
    raise ValueError(f"{split_dir} has no class folders.")
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    files = sorted(e.path for e in os.scandir(class_dir)
                   if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f"Class folder {class_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)}).")
    paths += files
    labels += [label] * len(files)
  return paths, labels, classes


def decode_images(paths: Sequence[str], labels: Sequence[int], image_size: int) -> tf.data.Dataset:
  """Reads and decodes image files to uint8 RGB [S, S, 3] (grayscale and RGBA are converted)."""

  def read(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    same = tf.reduce_all(tf.shape(image)[:2] == image_size)
    image = tf.cond(same, lambda: image, lambda: tf.cast(
        tf.clip_by_value(tf.round(tf.image.resize(image, [image_size, image_size])), 0, 255),
        tf.uint8))
    return tf.ensure_shape(image, [image_size, image_size, 3]), label

  ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
  return ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=True)


def decode_folder(paths: Sequence[str], labels: Sequence[int], image_size: int,
                  chunk: int = 1024) -> tf.data.Dataset:
  """Decodes every image once, up front, into memory; a bad file fails here, named.

  tf.data decode errors do not say which file failed; decoding in chunks lets the loader find the
  culprit in the failing chunk and raise a ValueError naming it (grayscale and RGBA are converted
  to RGB, other sizes resized).
  """
  images, done = [], 0
  iterator = iter(decode_images(paths, labels, image_size).batch(chunk))
  while done < len(paths):
    try:
      batch, _ = next(iterator)
    except tf.errors.InvalidArgumentError as error:
      for path in paths[done:done + chunk]:
        try:
          tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as file_error:
          raise ValueError(f"Cannot decode image {path}: {file_error.message}") from None
      raise ValueError(f"Cannot decode an image among {paths[done:done + chunk][:3]}...: "
                       f"{error.message}") from None
    images.append(batch.numpy())
    done += len(batch)
  return tf.data.Dataset.from_tensor_slices((np.concatenate(images),
                                             np.asarray(labels, np.int32)))


def _probe_size(path):
  try:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except tf.errors.InvalidArgumentError as error:
    raise ValueError(f"Cannot decode image {path}: {error.message}") from None
  return int(image.shape[0])


def _load_folder(config):
  train_paths, train_labels, classes = list_image_folder(config.data_dir, "train")
  test_paths, test_labels, test_classes = list_image_folder(config.data_dir, "test")
  if classes != test_classes:
    only_train = sorted(set(classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(classes))
    raise ValueError(f"Folder dataset {config.data_dir!r}: train and test classes differ "
                     f"(only in train: {only_train}; only in test: {only_test}).")
  if config.train_subset and config.train_subset < len(train_paths):
    # A fixed random subset (the folder order is sorted by class).
    keep = np.sort(np.random.RandomState(0).permutation(len(train_paths))[:config.train_subset])
    train_paths = [train_paths[i] for i in keep]
    train_labels = [train_labels[i] for i in keep]
  size = config.image_size or _probe_size(train_paths[0])
  info = DataInfo("folder", len(classes), (size, size, 3), len(train_paths), len(test_paths),
                  CIFAR_MEAN, CIFAR_STD, crop_padding=4 * size // 32, flip=True,
                  class_names=tuple(classes))
  return (decode_folder(train_paths, train_labels, size),
          decode_folder(test_paths, test_labels, size), info)


# ---------------------------------------------------------------------------------------------
# TFDS CIFAR-10 / CIFAR-100.


def _load_tfds(config):
  import tensorflow_datasets as tfds
  kwargs = dict(data_dir=config.data_dir or None, as_supervised=True, shuffle_files=False)
  (train, test), ds_info = tfds.load(config.dataset, split=["train", "test"], with_info=True,
                                     **kwargs)
  num_classes = ds_info.features["label"].num_classes
  cast = lambda x, y: (tf.cast(x, tf.uint8), tf.cast(y, tf.int32))
  train, test = train.map(cast), test.map(cast)
  num_train, num_test = _count(train, ds_info, "train"), _count(test, ds_info, "test")
  info = DataInfo(config.dataset, num_classes, (32, 32, 3), num_train, num_test, CIFAR_MEAN,
                  CIFAR_STD, crop_padding=4, flip=True)
  return train, test, info


def _count(ds, ds_info, split):
  try:
    return ds_info.splits[split].num_examples
  except KeyError:  # e.g. under tfds.testing.mock_data, whose info has no splits.
    cardinality = int(ds.cardinality())
    return cardinality if cardinality >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def _load_tiny_imagenet(config):
  from mixmo_tf.tiny_imagenet import load_tiny_imagenet
  return load_tiny_imagenet(config.data_dir, config.train_subset)


# ---------------------------------------------------------------------------------------------
# Batching, augmentation, batch repetition.


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
  """A distinct, reproducible seed per (run seed, 0-based epoch, stream): 0 data order, 1 MSDA
  partners, 2 AugMix, 3 AugMix of partners (distinct from every other run seed's streams)."""
  return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def train_batches(train: tf.data.Dataset, info: DataInfo, unique_batch_size: int, seed: int,
                  epoch: int, skip_batches: int = 0, partner_batch_size: int = 0,
                  augmix=None) -> tf.data.Dataset:
  """One epoch of shuffled batches of B/b unique raw examples (incomplete last batch dropped).

  With `partner_batch_size`, each element also carries that many MSDA partners drawn from the
  whole training set by an independent shuffle (REFERENCE 12.14): ((x, y), (x_partner, y_partner)).
  `augmix`: optional (width, depth, severity); AugMix runs here, once per unique example with a
  seed from (seed, epoch, position), so the b copies of an example share its draws (REFERENCE 9)
  and yield float [0, 1] images.
  """
  ds = train.shuffle(info.num_train, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
  if augmix:
    ds = ds.enumerate().map(_augmix_fn(seed, epoch, 2, *augmix), num_parallel_calls=AUTOTUNE,
                            deterministic=True)
  ds = ds.batch(unique_batch_size, drop_remainder=True)
  if partner_batch_size:
    partners = train.shuffle(info.num_train, seed=epoch_seed(seed, epoch, 1),
                             reshuffle_each_iteration=True).repeat()
    if augmix:
      partners = partners.enumerate().map(_augmix_fn(seed, epoch, 3, *augmix),
                                          num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = tf.data.Dataset.zip(ds, partners.batch(partner_batch_size, drop_remainder=True))
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(AUTOTUNE)


def _augmix_fn(seed, epoch, stream, width, depth, severity):
  from mixmo_tf.augmix import augmix
  base = tf.constant([epoch_seed(seed, epoch, stream), 0], tf.int64)

  def apply(index, example):
    image, label = example
    example_seed = tf.random.experimental.stateless_fold_in(base, index)
    return augmix(image, example_seed, width, depth, severity), label
  return apply


def steps_per_epoch(info: DataInfo, unique_batch_size: int) -> int:
  """Steps per pass over the unique data: b times the b = 1 count (REFERENCE 6.6)."""
  return info.num_train // unique_batch_size


def random_crop_flip(images, seed, padding: int, flip: bool):
  """Per-example random crop after zero padding and random horizontal flip; float [0, 1] out.

  images: uint8 or float [B, H, W, C]. Zero padding is black, as PyTorch's RandomCrop on PIL.
  """
  x = tf.cast(images, tf.float32)
  if images.dtype == tf.uint8:
    x = x / 255.0
  seed_y, seed_x, seed_f = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  batch = tf.shape(x)[0]
  height, width = x.shape[1], x.shape[2]
  if padding:
    x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    oy = tf.random.stateless_uniform([batch], seed_y, 0, 2 * padding + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([batch], seed_x, 0, 2 * padding + 1, dtype=tf.int32)
    x = tf.gather(x, oy[:, None] + tf.range(height)[None], axis=1, batch_dims=1)
    x = tf.gather(x, ox[:, None] + tf.range(width)[None], axis=2, batch_dims=1)
  if flip:
    do_flip = tf.random.stateless_uniform([batch], seed_f) < 0.5
    x = tf.where(do_flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
  return x


def normalize(images, mean, std):
  return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def preprocess_eval(images, info: DataInfo):
  """uint8 test images -> normalised float32 (no augmentation)."""
  return normalize(tf.cast(images, tf.float32) / 255.0, info.mean, info.std)


def member_indices(num_unique, num_members: int, batch_repetitions: int,
                   input_repetition_probability: float, seed):
  """Batch repetition and member pairing (REFERENCE 6): [M, B] indices into the unique batch.

  Each unique index is repeated b times (B = b * num_unique entries); every member gets its own
  random permutation of that list, so each example appears exactly b times per member, each time
  beside independently drawn partners. The first floor(B * rho_ir) slots feed member 0's entry to
  every member (MIMO input repetition).
  """
  size = num_unique * batch_repetitions
  repeated = tf.repeat(tf.range(num_unique), batch_repetitions)
  seeds = tf.random.experimental.stateless_split(seed, num_members)
  perms = [tf.argsort(tf.random.stateless_uniform([size], seeds[i])) for i in range(num_members)]
  indices = tf.gather(repeated, tf.stack(perms))  # [M, B]
  if input_repetition_probability > 0 and num_members > 1:
    num_shared = tf.cast(tf.floor(tf.cast(size, tf.float32) * input_repetition_probability),
                         tf.int32)
    same = tf.range(size) < num_shared
    indices = tf.where(same[None, :], indices[:1], indices)
  return indices

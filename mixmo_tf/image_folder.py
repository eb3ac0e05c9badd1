"""Image files on disk: listing class folders, decoding once into memory, fixed train subsets.

Shared by the class-folder datasets (`data`) and Tiny ImageNet (`tiny_imagenet`).
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SUBSET_SEED = 0  # Train subsets are a fixed random sample, the same in every run.


def subset_indices(num_examples: int, subset: int) -> np.ndarray:
  """Sorted indices of the fixed random training subset of `subset` examples (all if 0 or
  larger than the set): a seed-0 permutation, so every run and every loader picks the same ones."""
  if not subset or subset >= num_examples:
    return np.arange(num_examples)
  return np.sort(np.random.RandomState(SUBSET_SEED).permutation(num_examples)[:subset])


def list_images(directory: str) -> List[str]:
  """The image files directly in `directory`, sorted; raises ValueError naming it if none."""
  files = sorted(e.path for e in os.scandir(directory)
                 if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"{directory} contains no images ({', '.join(IMAGE_EXTENSIONS)}).")
  return files


def list_image_folder(root: str, split: str) -> Tuple[List[str], List[int], List[str]]:
  """Lists `root/split/<class>/<image>`; class index = sorted folder name. Raises ValueError
  naming what is wrong (no split folder, no class folder, an empty class)."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise ValueError(f"Folder dataset {root!r} has no {split!r} directory ({split_dir}).")
  classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
  if not classes:
    raise ValueError(f"{split_dir} has no class folders.")
  paths, labels = [], []
  for label, name in enumerate(classes):
    files = list_images(os.path.join(split_dir, name))
    paths += files
    labels += [label] * len(files)
  return paths, labels, classes


def _decode_file(path, image_size: int):
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  same = tf.reduce_all(tf.shape(image)[:2] == image_size)
  image = tf.cond(same, lambda: image, lambda: tf.cast(
      tf.clip_by_value(tf.round(tf.image.resize(image, [image_size, image_size])), 0, 255),
      tf.uint8))
  return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_folder(paths: Sequence[str], labels: Sequence[int], image_size: int,
                  chunk: int = 1024) -> tf.data.Dataset:
  """Decodes every image once, up front, into memory: (uint8 [S, S, 3], int32 label) pairs.

  Grayscale and RGBA become RGB, other sizes are resized. tf.data decode errors do not say which
  file failed, so a failing chunk is re-decoded file by file to raise a ValueError naming it.
  """
  ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
  ds = ds.map(lambda p, y: (_decode_file(p, image_size), y), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  images, done = [], 0
  iterator = iter(ds.batch(chunk))
  while done < len(paths):
    try:
      batch, _ = next(iterator)
    except tf.errors.InvalidArgumentError as error:
      for path in paths[done:done + chunk]:
        probe_size(path)
      raise ValueError(f"Cannot decode an image among {paths[done:done + chunk][:3]}...: "
                       f"{error.message}") from None
    images.append(batch.numpy())
    done += len(batch)
  return tf.data.Dataset.from_tensor_slices((np.concatenate(images),
                                             np.asarray(labels, np.int32)))


def probe_size(path: str) -> int:
  """The height of one image file; raises ValueError naming the file if it cannot be decoded."""
  try:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
    raise ValueError(f"Cannot decode image {path}: {error.message}") from None
  return int(image.shape[0])

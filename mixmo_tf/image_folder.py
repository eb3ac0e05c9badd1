"""Image files on disk: listing class folders, decoding once into memory, fixed train subsets.

Two decoders that give the same pixels (tests/test_data.py): `decode_images` (pillow, NumPy out,
for every Keras backend) and `decode_folder` (tf.io in a parallel tf.data map, for the TensorFlow
input pipeline, about twice as fast). TensorFlow is imported only by the latter.

Shared by the class-folder datasets (`data`) and Tiny ImageNet (`tiny_imagenet`).
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np

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


def _decode_one(path: str, image_size: int) -> np.ndarray:
  """One file -> uint8 [S, S, 3]; ValueError naming the file if it cannot be decoded."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("RGB"))  # Grayscale, palette, RGBA (alpha dropped).
  except (OSError, UnidentifiedImageError, ValueError) as error:
    raise ValueError(f"Cannot decode image {path}: {error}") from None
  if pixels.shape[:2] != (image_size, image_size):
    import keras  # Bilinear without antialiasing, rounded: tf.image.resize's rule (half pixels).
    resized = keras.ops.image.resize(pixels[None].astype(np.float32), (image_size, image_size),
                                     interpolation="bilinear", antialias=False)
    pixels = np.clip(np.round(keras.ops.convert_to_numpy(resized)[0]), 0, 255).astype(np.uint8)
  return pixels


def decode_images(paths: Sequence[str], image_size: int) -> np.ndarray:
  """Decodes image files once, up front, into one uint8 array [N, S, S, 3], without TensorFlow.

  Pillow with libjpeg's accurate integer DCT: on the shared CIFAR-10 JPEGs the pixels equal
  tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE"), which `decode_folder` uses; TensorFlow's
  default DCT (INTEGER_FAST) differs by up to 5 levels (tests/test_data.py). Grayscale and RGBA
  become RGB, other sizes are resized. One thread: for 32x32 JPEGs Python's per-file work holds
  the GIL, and a thread pool measured no faster (~3,200 images/s here).
  """
  images = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
  for i, path in enumerate(paths):
    images[i] = _decode_one(path, image_size)
  return images


def _decode_file(path, image_size: int):
  import tensorflow as tf
  raw = tf.io.read_file(path)
  # JPEGs with libjpeg's accurate integer DCT: the pixels pillow gives (`decode_images`).
  image = tf.cond(tf.io.is_jpeg(raw),
                  lambda: tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE"),
                  lambda: tf.io.decode_image(raw, channels=3, expand_animations=False))
  image = tf.ensure_shape(image, [None, None, 3])
  same = tf.reduce_all(tf.shape(image)[:2] == image_size)
  image = tf.cond(same, lambda: image, lambda: tf.cast(
      tf.clip_by_value(tf.round(tf.image.resize(image, [image_size, image_size])), 0, 255),
      tf.uint8))
  return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_folder(paths: Sequence[str], labels: Sequence[int], image_size: int,
                  chunk: int = 1024) -> tf.data.Dataset:
  """The TensorFlow path's decoder: every image once, up front, into memory, as a tf.data source
  of (uint8 [S, S, 3], int32 label) pairs; the same pixels as `decode_images` (tested), in a
  parallel tf.data map (2x pillow's speed here: 60,000 CIFAR-10 JPEGs in ~9 s vs ~19 s).

  Grayscale and RGBA become RGB, other sizes are resized. tf.data decode errors do not say which
  file failed, so a failing chunk is re-decoded file by file to raise a ValueError naming it.
  """
  import tensorflow as tf
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
  """The height of one image file; raises ValueError naming the file if it cannot be read."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return int(image.size[1])
  except (OSError, UnidentifiedImageError) as error:
    raise ValueError(f"Cannot decode image {path}: {error}") from None

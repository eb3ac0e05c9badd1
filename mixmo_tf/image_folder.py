"""Image files on disk: listing class folders, decoding once into memory, fixed train subsets.

TensorFlow-free (pillow), so every Keras backend reads the same pixels.

Shared by the class-folder datasets (`data`) and Tiny ImageNet (`tiny_imagenet`).
"""

from __future__ import annotations

import concurrent.futures
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


def decode_images(paths: Sequence[str], image_size: int, threads: int = 0) -> np.ndarray:
  """Decodes image files once, up front, into one uint8 array [N, S, S, 3] (no TensorFlow).

  Pillow with libjpeg's accurate integer DCT: on the shared CIFAR-10 JPEGs the pixels equal
  tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE"); TensorFlow's default (INTEGER_FAST) differs
  by up to 5 levels (tests/test_data.py). Grayscale and RGBA become RGB, other sizes are resized.
  Pillow releases the GIL while decoding, so a thread pool uses every core.
  """
  if not len(paths):
    return np.zeros((0, image_size, image_size, 3), np.uint8)
  workers = threads or min(32, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    images = list(pool.map(lambda p: _decode_one(p, image_size), paths, chunksize=256))
  return np.stack(images)


def decode_folder(paths: Sequence[str], labels: Sequence[int], image_size: int):
  """`decode_images` as a tf.data source of (uint8 [S, S, 3], int32 label) pairs."""
  import tensorflow as tf
  return tf.data.Dataset.from_tensor_slices((decode_images(paths, image_size),
                                             np.asarray(labels, np.int32)))


def probe_size(path: str) -> int:
  """The height of one image file; raises ValueError naming the file if it cannot be read."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return int(image.size[1])
  except (OSError, UnidentifiedImageError) as error:
    raise ValueError(f"Cannot decode image {path}: {error}") from None

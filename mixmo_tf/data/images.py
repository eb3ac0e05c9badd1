"""Image files on disk: listing class folders, decoding into uint8 arrays, resizing, train subsets.

`decode_images` (pillow, every backend) and `data.tf_images.decode_images_tf` (tf.io in a parallel
tf.data map, about twice as fast, used where TensorFlow is the backend) give the same pixels
(tests/test_data.py). One resize rule for every path: `resize`. Shared by the class-folder
datasets, Tiny ImageNet, ImageNet-layout folders and OOD folders.
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
    pixels = resize(pixels[None], image_size)[0]
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


def probe_size(path: str) -> int:
  """The height of one image file; raises ValueError naming the file if it cannot be read."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return int(image.size[1])
  except (OSError, UnidentifiedImageError) as error:
    raise ValueError(f"Cannot decode image {path}: {error}") from None


def resize(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
  """uint8 [N, h, w, 3] -> [N, size, size, 3]: bilinear with half-pixel centres, no antialiasing,
  rounded (tf.image.resize's rule, on every backend through keras.ops)."""
  import keras
  out = []
  for start in range(0, len(images), chunk):
    x = keras.ops.image.resize(images[start:start + chunk].astype(np.float32), (size, size),
                               interpolation="bilinear", antialias=False)
    out.append(np.clip(np.round(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8))
  return np.concatenate(out) if out else np.zeros((0, size, size, images.shape[-1]), np.uint8)


def list_images_recursively(root: str) -> List[str]:
  """Every image file under `root`, symlinked folders followed once; sorted folder by folder (the
  order of `list_image_folder` on a class-folder tree). ValueError naming `root` if none."""
  paths, seen = [], set()
  for directory, subdirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(directory)
    if real in seen:  # A symlink loop, or the same folder linked twice.
      subdirs[:] = []
      continue
    seen.add(real)
    subdirs.sort()
    paths += [os.path.join(directory, f) for f in sorted(files)
              if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
  if not paths:
    raise ValueError(f"{root} contains no images ({', '.join(IMAGE_EXTENSIONS)}), searched "
                     "recursively.")
  return paths

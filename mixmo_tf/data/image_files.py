"""Image files decoded when a batch asks for them: datasets larger than memory, on every backend.

`ImageFiles` holds paths and labels only; `take(indices, epoch)` decodes those files (a thread pool:
Pillow releases the GIL while it decodes) into uint8 [n, S, S, 3]. Two transforms:

  "resize"   every image resized to S x S (`images.resize`'s rule): the in-memory folders' pixels.
  "imagenet" the standard ResNet preprocessing (docs/method.md §9.1): training images get a random
             resized crop (area 8%-100%, aspect 3/4-4/3, 10 tries then the centre, torchvision's
             procedure) drawn from (seed, epoch, example) so a resumed run redraws it, resized to
             S x S; test images are resized so the shorter side is S / 0.875, then centre-cropped.
             Flips are per copy, in the train step.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from mixmo_tf.core import seeds
from mixmo_tf.data.images import decode_images

TRANSFORMS = ("resize", "imagenet")
CENTRE_FRACTION = 0.875  # Test: shorter side to S / 0.875, centre crop S (224 of 256).
AREA_RANGE = (0.08, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)
_THREADS = max(2, min(8, os.cpu_count() or 2))
_POOL = []  # One decoding thread pool per process, made on first use.


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  if not _POOL:
    _POOL.append(concurrent.futures.ThreadPoolExecutor(_THREADS, "mixmo_decode"))
  return _POOL[0]


def _open_rgb(path: str):
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return image.convert("RGB")
  except (OSError, UnidentifiedImageError, ValueError) as error:
    raise ValueError(f"Cannot decode image {path}: {error}") from None


def random_resized_box(width: int, height: int, rng: np.random.Generator):
  """(left, top, right, bottom) of a random resized crop: area in AREA_RANGE of the image,
  log-uniform aspect ratio in RATIO_RANGE; after 10 failed tries the centre crop with the
  aspect ratio clamped to the range (torchvision's RandomResizedCrop.get_params)."""
  area = width * height
  log_ratio = (math.log(RATIO_RANGE[0]), math.log(RATIO_RANGE[1]))
  for _ in range(10):
    target = area * rng.uniform(*AREA_RANGE)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, left + w, top + h
  ratio = width / height
  if ratio < RATIO_RANGE[0]:
    w, h = width, int(round(width / RATIO_RANGE[0]))
  elif ratio > RATIO_RANGE[1]:
    w, h = int(round(height * RATIO_RANGE[1])), height
  else:
    w, h = width, height
  left, top = (width - w) // 2, (height - h) // 2
  return left, top, left + w, top + h


def centre_box(width: int, height: int, size: int):
  """The centre crop of `size` after resizing the shorter side to size / 0.875: (new width, new
  height, (left, top, right, bottom))."""
  scale = (size / CENTRE_FRACTION) / min(width, height)
  new_w, new_h = max(size, int(round(width * scale))), max(size, int(round(height * scale)))
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return new_w, new_h, (left, top, left + size, top + size)


class ImageFiles:
  """Examples on disk, decoded on demand (see the module doc).

  Args:
    paths, labels: the files and their int labels.
    size: S, the decoded side.
    transform: "resize" or "imagenet".
    train: whether `take` draws random resized crops ("imagenet"), else centre crops.
    seed: the run seed (keys the random crops with the epoch and the example's index).
  """

  def __init__(self, paths: Sequence[str], labels, size: int, transform: str = "resize",
               train: bool = False, seed: int = 0):
    if transform not in TRANSFORMS:
      raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}.")
    self.paths = list(paths)
    self.labels = np.asarray(labels).astype(np.int32)
    if len(self.paths) != len(self.labels):
      raise ValueError(f"{len(self.paths)} image files but {len(self.labels)} labels.")
    self.size, self.transform, self.train, self.seed = int(size), transform, train, int(seed)

  def __len__(self) -> int:
    return len(self.paths)

  def _decode(self, index: int, epoch: Optional[int]) -> np.ndarray:
    size = self.size
    if self.transform == "resize":  # The in-memory folders' decoder, one file.
      return decode_images([self.paths[index]], size)[0]
    from PIL import Image
    image = _open_rgb(self.paths[index])
    if self.train:
      rng = seeds.crop_generator(self.seed, epoch or 0, index)
      box = random_resized_box(image.width, image.height, rng)
      return np.asarray(image.resize((size, size), Image.BILINEAR, box=box))
    new_w, new_h, box = centre_box(image.width, image.height, size)
    return np.asarray(image.resize((new_w, new_h), Image.BILINEAR).crop(box))

  def take(self, indices, epoch: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, S, S, 3], labels [n]) of the examples at `indices`; for training crops,
    `epoch` keys the random draws."""
    indices = np.asarray(indices)
    images = np.empty((len(indices), self.size, self.size, 3), np.uint8)
    for k, pixels in enumerate(_pool().map(lambda i: self._decode(int(i), epoch), indices)):
      images[k] = pixels
    return images, self.labels[indices]

  def batches(self, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(images, labels) in order, every example once (the last batch may be smaller)."""
    for start in range(0, len(self), batch_size):
      yield self.take(np.arange(start, min(start + batch_size, len(self))))

  def decoded_bytes(self) -> int:
    return len(self) * self.size * self.size * 3

"""Corrupted test sets (docs/method.md §10.4): CIFAR-10-C and CIFAR-100-C as uint8 arrays.

Both releases (Hendrycks & Dietterich) share one layout, read on every backend: a folder of
`<corruption>.npy` files, uint8 [5B, H, W, 3] holding severities 1..5 in consecutive blocks of B
(B = 10,000 in the releases), and `labels.npy` [5B]. CIFAR-10-C can also come from TensorFlow
Datasets (`cifar10_corrupted`, TensorFlow needed) when its folder holds no `labels.npy`.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
KINDS = ("cifar10_c", "cifar100_c")

# File stems of the released archives (the same 19 in CIFAR-10-C and CIFAR-100-C): `<stem>.npy`.
RELEASED_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
    "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate",
    "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur")
CIFAR100_C_CORRUPTIONS = RELEASED_CORRUPTIONS

# TFDS `cifar10_corrupted` config names are f"{corruption}_{severity}".
CIFAR10_C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic", "fog", "frost", "frosted_glass_blur",
    "gaussian_blur", "gaussian_noise", "impulse_noise", "jpeg_compression", "motion_blur",
    "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur")

# (corruption, severity, uint8 images [B, H, W, 3], int32 labels [B])
CorruptedSet = Tuple[str, int, np.ndarray, np.ndarray]


def check_severities(severities) -> Tuple[int, ...]:
  severities = tuple(int(s) for s in severities)
  for severity in severities:
    if severity not in SEVERITIES:
      raise ValueError(f"Corruption severity must be in {SEVERITIES}, got {severity!r}.")
  return severities


def is_released_folder(directory: Optional[str]) -> bool:
  """Whether `directory` holds a released .npy set (its labels.npy)."""
  return bool(directory) and os.path.isfile(os.path.join(directory, "labels.npy"))


def released_sets(directory: str, corruptions: Sequence[str] = RELEASED_CORRUPTIONS,
                  severities: Sequence[int] = SEVERITIES) -> Iterator[CorruptedSet]:
  """Every (corruption, severity) block of a released folder. Every file is checked now
  (memory-mapped, so only headers are read); each block is read when it is yielded."""
  severities = check_severities(severities)
  labels_path = os.path.join(directory, "labels.npy")
  if not os.path.exists(labels_path):
    raise ValueError(f"Corrupted-set labels file not found: {labels_path}")
  labels = np.load(labels_path, mmap_mode="r")
  if labels.ndim != 1 or len(labels) == 0 or len(labels) % len(SEVERITIES):
    raise ValueError(f"{labels_path} must be 1-D with a multiple of {len(SEVERITIES)} entries "
                     f"(one block per severity), got shape {labels.shape}.")
  block = len(labels) // len(SEVERITIES)
  images = {}
  for name in corruptions:
    path = os.path.join(directory, f"{name}.npy")
    if not os.path.exists(path):
      raise ValueError(f"Corrupted-set file not found: {path}")
    array = np.load(path, mmap_mode="r")
    if array.ndim != 4 or array.shape[0] != len(labels) or array.shape[-1] != 3:
      raise ValueError(f"{path} must have shape [{len(labels)}, H, W, 3] to match {labels_path}, "
                       f"got {array.shape}.")
    if array.dtype != np.uint8:
      raise ValueError(f"{path} must hold uint8 images, got dtype {array.dtype}.")
    images[name] = array

  def generate():
    for name, array in images.items():
      for severity in severities:
        start = (severity - 1) * block
        yield (name, severity, np.ascontiguousarray(array[start:start + block]),
               np.asarray(labels[start:start + block], np.int32))
  return generate()


def tfds_cifar10_c_sets(data_dir: Optional[str] = None,
                        corruptions: Sequence[str] = CIFAR10_C_CORRUPTIONS,
                        severities: Sequence[int] = SEVERITIES) -> Iterator[CorruptedSet]:
  """CIFAR-10-C through TFDS (TensorFlow needed). Names and severities are checked now; each TFDS
  config is loaded when its turn comes."""
  severities = check_severities(severities)
  corruptions = tuple(corruptions)
  for name in corruptions:
    if name not in CIFAR10_C_CORRUPTIONS:
      raise ValueError(f"Unknown CIFAR-10-C corruption {name!r}; expected one of "
                       f"{CIFAR10_C_CORRUPTIONS}.")

  def generate():
    from mixmo_tf.data import tfds  # Prepared once under data_dir, never re-downloaded.
    for name in corruptions:
      for severity in severities:
        images, labels, _ = tfds.load_split(f"cifar10_corrupted/{name}_{severity}", "test",
                                            data_dir)
        yield name, severity, images, labels
  return generate()


def corrupted_sets(kind: str, directory: str = "") -> Iterator[CorruptedSet]:
  """The sets of `--corruptions=kind`: a released .npy folder (either kind, any backend), or for
  cifar10_c without one, TFDS under `directory` (TFDS's default directory when empty)."""
  if kind not in KINDS:
    raise ValueError(f"--corruptions={kind!r} is not valid; expected one of {', '.join(KINDS)}.")
  if is_released_folder(directory):
    return released_sets(directory)
  if kind == "cifar100_c":
    raise ValueError(f"--corruptions_dir={directory!r} holds no labels.npy: --corruptions="
                     "cifar100_c reads the released CIFAR-100-C .npy folder.")
  return tfds_cifar10_c_sets(directory or None)

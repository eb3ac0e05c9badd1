"""All TFDS access (TensorFlow): CIFAR-10, CIFAR-100, CIFAR-10-C, OOD test splits, as NumPy arrays.

A dataset already prepared under `--data_dir` (e.g. copied from another machine) is used as is and
never downloaded again. Otherwise TFDS downloads and prepares it there; when that fails (offline,
blocked, bad archive) the run stops with one DatasetUnavailableError that names the dataset, the
directory searched, the reason, and the two ways forward, instead of a traceback from deep inside
TFDS.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from mixmo_tf.data.datasets import DatasetUnavailableError

# Longest underlying reason quoted in a DatasetUnavailableError (one line).
_MAX_REASON_CHARS = 400


def prepared_builder(name: str, data_dir: Optional[str] = None):
  """Returns the TFDS builder of `name` ("cifar100", "cifar10_corrupted/fog_1"), prepared.

  Uses the copy prepared under `data_dir` (TFDS's default directory when empty) if there is one;
  otherwise downloads and prepares it there. Raises DatasetUnavailableError if that fails.
  """
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir or None)
  # The exists() check first keeps is_prepared() from logging a warning about a missing folder.
  if builder.data_path.exists() and builder.is_prepared():
    return builder
  try:
    builder.download_and_prepare()
  except ImportError:
    raise  # A broken installation (a missing module), not a download problem: keep its traceback.
  except Exception as error:  # pylint: disable=broad-except
    raise DatasetUnavailableError(unavailable_message(name, data_dir, builder, error)) from None
  return builder


def load_split(name: str, split: str, data_dir: Optional[str] = None,
               image_size: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
  """(uint8 images [N, H, W, C], int32 labels [N], number of classes) of a split, read once into
  memory in the files' fixed order. Prepares the dataset first if needed (see prepared_builder).
  `image_size`: RGB images resized to image_size^2 (`data.images.resize`'s rule), for sets whose
  images vary in size or channels (OOD sets)."""
  builder = prepared_builder(name, data_dir)
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  if image_size:
    ds = ds.map(lambda x, y: (_rgb_at_size(x, image_size), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, labels = [], []
  for x, y in ds.batch(1024).prefetch(tf.data.AUTOTUNE):
    images.append(tf.cast(x, tf.uint8).numpy())
    labels.append(tf.cast(y, tf.int32).numpy())
  if not images:
    raise ValueError(f"TFDS dataset {name!r} split {split!r} has no examples.")
  num_classes = builder.info.features["label"].num_classes
  return np.concatenate(images), np.concatenate(labels), num_classes


def _rgb_at_size(image, size: int):
  """An image as RGB uint8 [size, size, 3]: grey tiled, alpha dropped, resized if needed."""
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif image.shape[-1] != 3:  # RGBA -> RGB; unknown channels: grey -> RGB, else the first 3.
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                    lambda: image[..., :3])
  same = tf.reduce_all(tf.shape(image)[:2] == size)
  image = tf.cond(same, lambda: image, lambda: tf.cast(
      tf.clip_by_value(tf.round(tf.image.resize(image, [size, size])), 0, 255), tf.uint8))
  return tf.ensure_shape(image, [size, size, 3])


def unavailable_message(name: str, data_dir: Optional[str], builder, error: BaseException) -> str:
  """The one error message: which dataset, where it was looked for, why it could not be
  downloaded (one line), and the two ways forward."""
  family = name.split("/")[0]
  corrupted = family == "cifar10_corrupted"
  flag = "--corruptions_dir" if corrupted else "--data_dir"  # Where the driver takes data_dir.
  root = str(builder.data_dir_root)
  where = f"{flag}={data_dir}" if data_dir else f"TFDS's default directory {root} ({flag} unset)"
  reason = " ".join(f"{type(error).__name__}: {error}".split())
  if len(reason) > _MAX_REASON_CHARS:
    reason = reason[:_MAX_REASON_CHARS - 3] + "..."
  if corrupted:
    other = "or skip the CIFAR-10-C evaluation with --corruptions=none."
  else:
    other = ("or train on an image tree instead: --dataset=folder --data_dir=ROOT with "
             "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>.")
  return (f"TFDS dataset {name!r} is not prepared under {where} (looked for {builder.data_dir}) "
          f"and could not be downloaded there: {reason}\n"
          f"Either prepare it on a machine with network access, `tfds build {family} "
          f"--data_dir=DIR`, then copy DIR/{family} to {os.path.join(root, family)} here and run "
          f"again (a prepared copy is never downloaded again); {other}")

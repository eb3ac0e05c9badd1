"""Per-copy augmentation in `keras.ops`: pad-crop, flip, normalisation (docs/method.md §6.4, §9).

Every copy of an example is cropped and flipped on its own, inside the train step, from a
stateless seed (docs/method.md §6.4), on any Keras backend. `mixmo_tf.data` re-exports both
functions for its TensorFlow input pipeline and for prediction.
"""

from __future__ import annotations

import keras
from keras import ops

from mixmo_tf.core import rng


def random_crop_flip(images, seed, padding: int, flip: bool):
  """Per-example random crop after zero padding and random horizontal flip; float [0, 1] out.

  images: uint8 (scaled by 1/255) or float [B, H, W, C]. Zero padding is black, as PyTorch's
  RandomCrop on PIL. Crop offsets are uniform in 0..2 * padding per axis; flips have probability
  1/2. Crop, flip and the gather of the pixels are one flat gather on the padded batch.
  """
  seed_y, seed_x, seed_f = rng.split_list(seed, 3)
  batch, height, width, channels = ops.shape(images)
  x = images
  if padding:
    x = ops.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
  if padding or flip:
    padded_h, padded_w = height + 2 * padding, width + 2 * padding
    rows = ops.arange(height, dtype="int32")[None, :]  # [1, H]
    cols = ops.arange(width, dtype="int32")[None, :]  # [1, W]
    if flip:  # A flipped copy reads its window's columns right to left.
      do_flip = rng.uniform([batch], seed_f) < 0.5
      cols = ops.where(do_flip[:, None], width - 1 - cols, cols)
    if padding:
      rows = rows + rng.uniform([batch], seed_y, 0, 2 * padding + 1, dtype="int32")[:, None]
      cols = cols + rng.uniform([batch], seed_x, 0, 2 * padding + 1, dtype="int32")[:, None]
    first = ops.arange(batch, dtype="int32")[:, None, None] * (padded_h * padded_w)
    flat = first + rows[:, :, None] * padded_w + cols[:, None, :]  # [B, H, W] positions
    x = ops.take(ops.reshape(x, (-1, channels)), flat, axis=0)
  scaled = keras.backend.standardize_dtype(images.dtype) == "uint8"
  x = ops.cast(x, "float32")
  return x / 255.0 if scaled else x


def normalize(images, mean, std):
  """(images - mean) / std per channel, float32 (the dataset's statistics, docs/method.md §9)."""
  return ((ops.cast(images, "float32") - ops.convert_to_tensor(mean, "float32"))
          / ops.convert_to_tensor(std, "float32"))

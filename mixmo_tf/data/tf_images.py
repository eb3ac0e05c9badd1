"""The TensorFlow fast path of image decoding: tf.io in a parallel tf.data map, NumPy out.

About twice pillow's speed here (60,000 CIFAR-10 JPEGs in ~9 s vs ~19 s), the same pixels as
`data.images.decode_images` (libjpeg's accurate integer DCT; tests/test_data.py); used when
TensorFlow is the Keras backend, pillow elsewhere.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from mixmo_tf.data.images import probe_size


def _decode_file(path, image_size: int):
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


def decode_images_tf(paths: Sequence[str], image_size: int, chunk: int = 1024) -> np.ndarray:
  """Decodes image files into one uint8 array [N, S, S, 3] (grayscale and RGBA become RGB, other
  sizes are resized). tf.data decode errors do not say which file failed, so a failing chunk is
  probed file by file to raise a ValueError naming it."""
  paths = list(paths)
  ds = tf.data.Dataset.from_tensor_slices(paths)
  ds = ds.map(lambda p: _decode_file(p, image_size), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  images, done = [], 0
  iterator = iter(ds.batch(chunk))
  while done < len(paths):
    try:
      batch = next(iterator)
    except tf.errors.InvalidArgumentError as error:
      for path in paths[done:done + chunk]:
        probe_size(path)
      raise ValueError(f"Cannot decode an image among {paths[done:done + chunk][:3]}...: "
                       f"{error.message}") from None
    images.append(batch.numpy())
    done += len(batch)
  return (np.concatenate(images) if images
          else np.zeros((0, image_size, image_size, 3), np.uint8))

"""AugMix as OFF applies it for the CIFAR-100-c study (docs/method.md §9, Table 4), in pure TensorFlow.

Per image: 3 chains, each of 1-4 ops drawn uniformly from `OPS` (no autocontrast) at severity 3,
i.e. 10% of each op's range (rotate 3 deg, shear 0.03, translate 4.5% of the size, posterize
4 bits, solarize threshold 25.6 of 256), signed ops flipped with probability 1/2; chains blended
with Dirichlet(1, 1, 1) weights and the result with the original image by m ~ Beta(1, 1).

Every op takes and returns a float32 image [H, W, C] in [0, 1] and reproduces the PIL operation
that OFF uses on the 256-level grid: level ops (equalize, posterize, solarize) act on round(255 x),
and geometric ops use PIL's affine convention with nearest-neighbour sampling and PIL's default
black fill (FILL_VALUE = 0), so an image on the grid stays on the grid.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import tensorflow as tf

# Value of pixels that geometric ops bring in from outside the image: 0 (black), PIL's default
# fill and hence what OFF's AugMix produces (docs/method.md §9).
FILL_VALUE = 0.0

# Each op's full range; severity s uses the fraction s / 30 of it (OFF: s = 3 -> 10%).
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45  # Fraction of the image width (x) or height (y).
MAX_SOLARIZE_THRESHOLD = 256.0
MAX_SEVERITY = 30


def _to_levels(image):
  """float [0, 1] -> int32 levels 0..255 (the uint8 values PIL operates on)."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.int32)


def _from_levels(levels):
  return tf.cast(levels, tf.float32) / 255.0


def _float_image(image):
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return tf.cast(image, tf.float32) / 255.0
  return tf.cast(image, tf.float32)


def _with_shape_of(out, image):
  out.set_shape(image.shape)
  return out


# ---------------------------------------------------------------------------------------------
# Colour ops.


def identity(image):
  """Returns the image unchanged (one of OFF's ten AugMix ops, docs/method.md §9)."""
  return tf.convert_to_tensor(image, tf.float32)


def invert(image):
  """1 - x, as PIL ImageOps.invert (255 - v) on the 256-level grid."""
  return 1.0 - tf.convert_to_tensor(image, tf.float32)


def posterize(image, bits: int = 4):
  """Keeps the top `bits` bits of each uint8 value, as PIL ImageOps.posterize (docs/method.md §9: 4)."""
  if not 1 <= int(bits) <= 8:
    raise ValueError(f"posterize bits must be in 1..8, got {bits!r}.")
  image = tf.convert_to_tensor(image, tf.float32)
  mask = 256 - 2 ** (8 - int(bits))  # e.g. 4 bits: 0b11110000.
  return _from_levels(tf.bitwise.bitwise_and(_to_levels(image), mask))


def solarize(image, threshold=25.6):
  """Inverts (1 - x) pixels whose uint8 value is >= threshold (of 256), as PIL ImageOps.solarize.

  docs/method.md §9: threshold 25.6 at severity 3, i.e. every value >= 26 (x >= ~0.1) is inverted.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  above = tf.cast(_to_levels(image), tf.float32) >= tf.cast(threshold, tf.float32)
  return tf.where(above, 1.0 - image, image)


def equalize(image):
  """Per-channel histogram equalisation on 256 levels, exactly as PIL ImageOps.equalize.

  For each channel: step = (N - count of the highest present level) // 255; level v maps to
  (step // 2 + #pixels below v) // step, clipped to 255; identity when step is 0 (flat image).
  """
  image = tf.convert_to_tensor(image, tf.float32)
  levels = _to_levels(image)
  channels = tf.shape(levels)[-1]
  flat = tf.transpose(tf.reshape(levels, [-1, channels]))  # [C, N]
  offsets = flat + 256 * tf.range(channels)[:, None]
  hist = tf.reshape(tf.math.bincount(tf.reshape(offsets, [-1]), minlength=256 * channels,
                                     maxlength=256 * channels), [channels, 256])
  highest = tf.reduce_max(tf.where(hist > 0, tf.range(256)[None], -1), axis=1)
  step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, highest, batch_dims=1)) // 255  # [C]
  lut = (step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // tf.maximum(
      step[:, None], 1)
  lut = tf.where(step[:, None] > 0, tf.minimum(lut, 255), tf.range(256)[None])
  out = tf.reshape(tf.transpose(tf.gather(lut, flat, batch_dims=1)), tf.shape(levels))
  return _with_shape_of(_from_levels(out), image)


# ---------------------------------------------------------------------------------------------
# Geometric ops: PIL's Image.transform(AFFINE) convention. Output pixel centre (x, y), in
# continuous coordinates where pixel i spans [i, i + 1), reads the input pixel containing
# (a x + b y + c, d x + e y + f); pixels read from outside the image are FILL_VALUE.


def affine(image, a, b, c, d, e, f):
  """Nearest-neighbour affine warp with PIL's coefficients (output -> input coordinates).

  Runs `ImageProjectiveTransformV3`, which maps output pixel indices to input indices and rounds;
  the half-pixel shift below converts PIL's continuous coordinates to those indices.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  a, b, c, d, e, f = (tf.cast(v, tf.float32) for v in (a, b, c, d, e, f))
  transform = tf.stack([a, b, c + 0.5 * (a + b - 1.0), d, e, f + 0.5 * (d + e - 1.0), 0.0, 0.0])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
      fill_value=tf.constant(FILL_VALUE, tf.float32), interpolation="NEAREST",
      fill_mode="CONSTANT")[0]
  return _with_shape_of(out, image)


def _size(image):
  shape = tf.cast(tf.shape(image), tf.float32)
  return shape[0], shape[1]  # height, width


def rotate(image, degrees):
  """Rotates counter-clockwise by `degrees` about the image centre, as PIL Image.rotate.

  docs/method.md §9: 3 degrees at severity 3, sign drawn at random.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  height, width = _size(image)
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  cx, cy = width / 2.0, height / 2.0
  return affine(image, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def shear_x(image, shear):
  """Horizontal shear: output (x, y) reads input (x + shear * y, y), as OFF's ShearX (0.03)."""
  return affine(image, 1.0, shear, 0.0, 0.0, 1.0, 0.0)


def shear_y(image, shear):
  """Vertical shear: output (x, y) reads input (x, y + shear * x), as OFF's ShearY (0.03)."""
  return affine(image, 1.0, 0.0, 0.0, shear, 1.0, 0.0)


def translate_x(image, fraction):
  """Output (x, y) reads input (x + fraction * W, y): content moves left by fraction * W pixels.

  As OFF's TranslateX (0.045 at severity 3; the sign is random, so the direction is immaterial).
  """
  image = tf.convert_to_tensor(image, tf.float32)
  _, width = _size(image)
  return affine(image, 1.0, 0.0, tf.cast(fraction, tf.float32) * width, 0.0, 1.0, 0.0)


def translate_y(image, fraction):
  """Output (x, y) reads input (x, y + fraction * H): content moves up by fraction * H pixels."""
  image = tf.convert_to_tensor(image, tf.float32)
  height, _ = _size(image)
  return affine(image, 1.0, 0.0, 0.0, 0.0, 1.0, tf.cast(fraction, tf.float32) * height)


# ---------------------------------------------------------------------------------------------
# Registry and the AugMix blend.


def posterize_bits(level: float) -> int:
  """OFF's posterize range [4, 8] at `level` = severity / 30: int(4 + 4 level) (severity 3: 4)."""
  return int(4.0 + 4.0 * level)


# name -> op(image, level, sign); level = severity / 30 in [0, 1] (a Python float), sign = +-1.
# Order and members as OFF's augment_list without autocontrast (docs/method.md §9); unsigned ops
# ignore `sign`, level-free ones ignore `level`.
OPS: Dict[str, Callable] = {
    "identity": lambda image, level, sign: identity(image),
    "equalize": lambda image, level, sign: equalize(image),
    "posterize": lambda image, level, sign: posterize(image, posterize_bits(level)),
    "rotate": lambda image, level, sign: rotate(image, sign * (MAX_ROTATE_DEGREES * level)),
    "solarize": lambda image, level, sign: solarize(image, MAX_SOLARIZE_THRESHOLD * level),
    "shear_x": lambda image, level, sign: shear_x(image, sign * (MAX_SHEAR * level)),
    "shear_y": lambda image, level, sign: shear_y(image, sign * (MAX_SHEAR * level)),
    "translate_x": lambda image, level, sign: translate_x(image, sign * (MAX_TRANSLATE * level)),
    "translate_y": lambda image, level, sign: translate_y(image, sign * (MAX_TRANSLATE * level)),
    "invert": lambda image, level, sign: invert(image),
}
_IDENTITY_INDEX = list(OPS).index("identity")


def _apply_op(image, index, level: float, sign, ops: Sequence[Callable]):
  """Applies ops[index] (an int32 tensor) to `image`; only the chosen branch runs."""
  branches = [lambda op=op: _with_shape_of(op(image, level, sign), image) for op in ops]
  return tf.switch_case(index, branches)


def augmix(image, seed, width: int = 3, max_depth: int = 4, severity: int = 3):
  """AugMix of one image (docs/method.md §9): (1 - m) x + m sum_j w_j chain_j(x), float32 in [0, 1].

  Usable in `tf.data.Dataset.map`; deterministic given `seed`. Normalisation is left to the
  caller: it is affine, so normalising this blend equals blending normalised images as OFF does.

  Args:
    image: uint8 [H, W, C] (or float in [0, 1]).
    seed: shape-[2] int32/int64 stateless seed; the same seed gives the same output.
    width: number of chains (w ~ Dirichlet(1, ..., 1)).
    max_depth: each chain applies a uniform random number of ops in 1..max_depth.
    severity: 0..30; each op uses severity / 30 of its range.
  Returns:
    float32 [H, W, C] in [0, 1].
  """
  if int(width) < 1:
    raise ValueError(f"augmix width must be >= 1, got {width!r}.")
  if int(max_depth) < 1:
    raise ValueError(f"augmix max_depth must be >= 1, got {max_depth!r}.")
  if not 0 <= severity <= MAX_SEVERITY:
    raise ValueError(f"augmix severity must be in 0..{MAX_SEVERITY}, got {severity!r}.")
  x = _float_image(image)
  level = float(severity) / MAX_SEVERITY
  ops = list(OPS.values())
  seeds = tf.random.experimental.stateless_split(seed, int(width) + 2)
  weights = tf.random.stateless_gamma([int(width)], seeds[0], alpha=1.0)  # Dirichlet(1, ..., 1)
  weights = weights / tf.reduce_sum(weights)
  m = tf.random.stateless_uniform([], seeds[1])  # Beta(1, 1) is uniform on [0, 1].
  mix = tf.zeros_like(x)
  for j in range(int(width)):
    chain_seeds = tf.random.experimental.stateless_split(seeds[2 + j], 1 + 2 * int(max_depth))
    depth = tf.random.stateless_uniform([], chain_seeds[0], 1, int(max_depth) + 1, tf.int32)
    aug = x
    for step in range(int(max_depth)):
      index = tf.random.stateless_uniform([], chain_seeds[1 + 2 * step], 0, len(ops), tf.int32)
      index = tf.where(step < depth, index, _IDENTITY_INDEX)  # Chain already finished.
      flip = tf.random.stateless_uniform([], chain_seeds[2 + 2 * step]) < 0.5
      sign = tf.where(flip, -1.0, 1.0)
      aug = _apply_op(aug, index, level, sign, ops)
    mix += weights[j] * aug
  out = tf.clip_by_value((1.0 - m) * x + m * mix, 0.0, 1.0)
  return _with_shape_of(out, x)

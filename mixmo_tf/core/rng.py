"""Stateless random numbers over a [2] integer seed, one small implementation per Keras backend.

The samplers derive every draw from (run seed, global step, replica id) by split and fold-in, so a
step is a pure function of its seed and a resumed run replays it (docs/method.md §12.12, §18 #5).
`keras.random` cannot do this: it takes no [2] seed tensors on TensorFlow and has no split,
fold-in or Dirichlet. This module can, on each backend:

  TensorFlow  `tf.random.experimental.stateless_split / stateless_fold_in` and
              `tf.random.stateless_uniform / normal / gamma`; seeds are int32 [2] tensors.
  JAX         `jax.random` on raw threefry2x32 keys; seeds are uint32 [2] arrays (the data of a
              `jax.random.PRNGKey`), usable under `jax.jit`.
  PyTorch     split / fold-in hash the two seed words with SplitMix64; each draw runs NumPy's
              Philox keyed by both words (a CPU `torch.Generator` would keep only 32 bits of a
              seed), on the CPU, so the numbers do not depend on the device; the result moves to
              Keras' device. Seeds are int64 [2] CPU tensors holding the words. Eager only.

Each backend has its own streams: one seed gives the same distributions everywhere, but different
numbers on TensorFlow, JAX and PyTorch. Nothing here imports TensorFlow, JAX or PyTorch until a
function runs on that backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15  # SplitMix64's increment.


def _int_words(seed) -> tuple:
  """An int seed as two uint32 words [low, high]: s < 2**32 gives [s, 0], as before."""
  seed = int(seed)
  if not -(1 << 63) <= seed < (1 << 64):
    raise ValueError(f"An int seed must fit in 64 bits, got {seed}.")
  return seed & _MASK32, (seed >> 32) & _MASK32


def _is_int(seed) -> bool:
  return isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)


def _check_seed_shape(shape) -> None:
  if len(shape) != 1 or shape[0] not in (2, None):
    raise ValueError(f"A seed must be an int or a [2] integer tensor, got shape {tuple(shape)}.")


class _TensorFlow:
  """Philox streams of TensorFlow's stateless ops (traceable in tf.function and XLA)."""

  @staticmethod
  def as_seed(seed):
    import tensorflow as tf
    if _is_int(seed):
      return tf.constant(np.array(_int_words(seed), np.uint32).view(np.int32))
    seed = tf.convert_to_tensor(seed)
    _check_seed_shape(seed.shape)
    if seed.dtype == tf.uint32:
      return tf.bitcast(seed, tf.int32)
    return tf.cast(seed, tf.int32)

  @staticmethod
  def split(seed, num):
    import tensorflow as tf
    return tf.random.experimental.stateless_split(seed, num)

  @staticmethod
  def fold_in(seed, data):
    import tensorflow as tf
    return tf.random.experimental.stateless_fold_in(seed, data)

  @staticmethod
  def uniform(shape, seed, minval, maxval, dtype):
    import tensorflow as tf
    if "int" in dtype:
      minval, maxval = tf.cast(minval, dtype), tf.cast(maxval, dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)

  @staticmethod
  def normal(shape, seed, dtype):
    import tensorflow as tf
    return tf.random.stateless_normal(shape, seed, dtype=dtype)

  @staticmethod
  def gamma(shape, seed, alpha, dtype):
    import tensorflow as tf
    return tf.random.stateless_gamma(shape, seed, alpha=tf.cast(alpha, dtype), dtype=dtype)


class _Jax:
  """threefry2x32 streams of `jax.random` on raw [2] uint32 keys (jit-compatible)."""

  @staticmethod
  def _key(seed):
    import jax
    return jax.random.wrap_key_data(seed, impl="threefry2x32")

  @staticmethod
  def as_seed(seed):
    import jax
    import jax.numpy as jnp
    if _is_int(seed):
      return jnp.asarray(np.array(_int_words(seed), np.uint32))
    seed = jnp.asarray(seed)
    _check_seed_shape(seed.shape)
    if seed.dtype == jnp.int32:
      return jax.lax.bitcast_convert_type(seed, jnp.uint32)
    return seed.astype(jnp.uint32)

  @staticmethod
  def split(seed, num):
    import jax
    return jax.random.key_data(jax.random.split(_Jax._key(seed), num))

  @staticmethod
  def fold_in(seed, data):
    import jax
    return jax.random.key_data(jax.random.fold_in(_Jax._key(seed), data))

  @staticmethod
  def uniform(shape, seed, minval, maxval, dtype):
    import jax
    if "int" in dtype:
      return jax.random.randint(_Jax._key(seed), tuple(shape), minval, maxval, dtype=dtype)
    return jax.random.uniform(_Jax._key(seed), tuple(shape), dtype, minval, maxval)

  @staticmethod
  def normal(shape, seed, dtype):
    import jax
    return jax.random.normal(_Jax._key(seed), tuple(shape), dtype)

  @staticmethod
  def gamma(shape, seed, alpha, dtype):
    import jax
    return jax.random.gamma(_Jax._key(seed), alpha, tuple(shape), dtype)


def _mix64(x: int) -> int:
  """SplitMix64's finaliser: a fixed bijection of 64-bit words with good avalanche."""
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
  return x ^ (x >> 31)


class _Torch:
  """SplitMix64-derived seeds; each draw runs NumPy's Philox keyed by the whole seed (eager)."""

  _SPLIT, _FOLD = 1, 2  # Salts: split(s, n)[i] and fold_in(s, i) are different seeds.

  @staticmethod
  def _words(seed) -> tuple:
    words = [int(w) & _MASK32 for w in seed.reshape(-1).tolist()]
    _check_seed_shape((len(words),))
    return tuple(words)

  @staticmethod
  def _derive(seed, data: int, salt: int) -> list:
    low, high = _Torch._words(seed)
    x = _mix64(((high << 32) | low) ^ _mix64((int(data) + salt * _GOLDEN64) & _MASK64))
    return [x & _MASK32, x >> 32]

  @staticmethod
  def _generator(seed) -> np.random.Generator:
    """NumPy's Philox keyed by all 64 bits of `seed`. Not a CPU `torch.Generator`: its MT19937
    keeps only the low 32 bits of a seed, so seeds collided (9902 and 242356 drew alike)."""
    low, high = _Torch._words(seed)
    return np.random.Generator(np.random.Philox(key=(high << 32) | low))

  @staticmethod
  def _shape(shape) -> list:
    return [int(d) for d in shape]

  _UNIT_BITS = {"float16": 11, "bfloat16": 8}  # Significand bits: k / 2**bits is exact, < 1.

  @staticmethod
  def _float(dtype: str):
    """NumPy's draw dtype for a float `dtype`: float64, else float32 (rounded to 16 bits after)."""
    return np.float64 if dtype == "float64" else np.float32

  @staticmethod
  def _tensor(values, dtype: str):
    """A NumPy draw as a `dtype` tensor on Keras' device."""
    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(values)), dtype)

  @staticmethod
  def as_seed(seed):
    import torch
    words = _int_words(seed) if _is_int(seed) else _Torch._words(torch.as_tensor(seed).cpu())
    return torch.tensor(words, dtype=torch.int64)

  @staticmethod
  def split(seed, num):
    import torch
    return torch.tensor([_Torch._derive(seed, i, _Torch._SPLIT) for i in range(num)],
                        dtype=torch.int64)

  @staticmethod
  def fold_in(seed, data):
    import torch
    return torch.tensor(_Torch._derive(seed, int(data), _Torch._FOLD), dtype=torch.int64)

  @staticmethod
  def uniform(shape, seed, minval, maxval, dtype):
    generator, shape = _Torch._generator(seed), _Torch._shape(shape)
    if "int" in dtype:
      return _Torch._tensor(generator.integers(int(minval), int(maxval), shape, dtype=dtype),
                            dtype)
    if dtype in _Torch._UNIT_BITS:  # Rounding a float32 draw to 16 bits could give 1.0.
      steps = 1 << _Torch._UNIT_BITS[dtype]
      unit = generator.integers(0, steps, shape).astype(np.float32) / steps
    else:
      unit = generator.random(shape, dtype=_Torch._float(dtype))
    return minval + (maxval - minval) * _Torch._tensor(unit, dtype)

  @staticmethod
  def normal(shape, seed, dtype):
    draws = _Torch._generator(seed).standard_normal(_Torch._shape(shape),
                                                    dtype=_Torch._float(dtype))
    return _Torch._tensor(draws, dtype)

  @staticmethod
  def gamma(shape, seed, alpha, dtype):
    shape, float_dtype = _Torch._shape(shape), _Torch._float(dtype)
    alpha = np.broadcast_to(np.asarray(keras.ops.convert_to_numpy(alpha), float_dtype), shape)
    draws = _Torch._generator(seed).standard_gamma(alpha, shape, dtype=float_dtype)
    return _Torch._tensor(draws, dtype)


_BACKENDS = {"tensorflow": _TensorFlow, "jax": _Jax, "torch": _Torch}


def _impl():
  name = keras.backend.backend()
  if name not in _BACKENDS:
    raise ValueError(f"mixmo_tf.rng supports the Keras backends {sorted(_BACKENDS)}, not {name!r}.")
  return _BACKENDS[name]


def as_seed(seed):
  """An int (s < 2**32 gives [s, 0]) or [2] integer tensor -> the backend's [2] seed tensor."""
  return _impl().as_seed(seed)


def split(seed, num: int):
  """`num` independent seeds derived from `seed`, as a [num, 2] tensor."""
  return _impl().split(as_seed(seed), num)


def split_list(seed, num: int) -> list:
  """`split` as a list of `num` [2] seeds (indexing, which traces where unpacking may not)."""
  seeds = split(seed, num)
  return [seeds[i] for i in range(num)]


def fold_in(seed, data):
  """A new seed from `seed` and an integer scalar `data` (a step, a replica id, a stream tag)."""
  return _impl().fold_in(as_seed(seed), data)


def uniform(shape, seed, minval=0.0, maxval=1.0, dtype: str = "float32"):
  """U[minval, maxval) of `shape`; integer dtypes draw integers with maxval exclusive."""
  dtype = keras.backend.standardize_dtype(dtype)
  return _impl().uniform(shape, as_seed(seed), minval, maxval, dtype)


def normal(shape, seed, dtype: str = "float32"):
  """Standard normal draws of `shape`."""
  return _impl().normal(shape, as_seed(seed), keras.backend.standardize_dtype(dtype))


def gamma(shape, seed, alpha, dtype: str = "float32"):
  """Gamma(alpha, 1) draws of `shape` (alpha a scalar or broadcastable to `shape`)."""
  return _impl().gamma(shape, as_seed(seed), alpha, keras.backend.standardize_dtype(dtype))


def _check_concentration(name: str, value) -> None:
  if isinstance(value, (int, float, np.number)) and not (value > 0 and math.isfinite(value)):
    raise ValueError(f"The {name} concentration must be positive and finite, got {value}.")


def _log_gamma(shape, seed, alpha):
  """log Gamma(alpha) draws, finite for small alpha: log G + log(U) / alpha with G ~
  Gamma(alpha + 1), U ~ U(0, 1] (the Marsaglia-Tsang boost; plain float32 draws underflow to 0)."""
  seed_g, seed_u = split_list(seed, 2)
  boosted = gamma(shape, seed_g, alpha + 1.0)
  unit = 1.0 - uniform(shape, seed_u)  # (0, 1]: its log is finite.
  return keras.ops.log(boosted) + keras.ops.log(unit) / alpha


def dirichlet(shape_prefix, seed, alpha, num: int):
  """Dirichlet(alpha 1_num) draws, float32 [*shape_prefix, num]: normalised Gamma(alpha) draws,
  normalised in log space (a softmax), so rows sum to 1 even where every gamma would underflow."""
  _check_concentration("Dirichlet", alpha)
  return keras.ops.softmax(_log_gamma(list(shape_prefix) + [num], seed, alpha), axis=-1)


def beta(shape, seed, a, b):
  """Beta(a, b) draws of `shape`: X / (X + Y) for X ~ Gamma(a), Y ~ Gamma(b), in log space."""
  _check_concentration("Beta", a)
  _check_concentration("Beta", b)
  seed_a, seed_b = split_list(seed, 2)
  return keras.ops.sigmoid(_log_gamma(shape, seed_a, a) - _log_gamma(shape, seed_b, b))

"""Layers shared by the MixMo networks: the convolutions, FusedBatchNorm and the multi-head readout.

Porting constants from the official PyTorch implementation (docs/method.md §2.1):
- BatchNorm momentum 0.1 in PyTorch = 0.9 in Keras; epsilon 1e-5 (PyTorch default, Keras' is 1e-3).
- Conv / dense kernels: truncated normal cut at 2 std with std sqrt(2 / fan_in) / 0.8796 = Keras
  `he_normal`. No conv has a bias.

Backend-agnostic: everything here runs on any Keras backend; TensorFlow is imported lazily, only by
FusedBatchNorm's TensorFlow fast path, so the models build and load under JAX without it.
"""

from __future__ import annotations

import functools
import math

import keras

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv(filters, kernel_size, strides=1, padding="same", name=None):
  return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                             use_bias=False, kernel_initializer="he_normal", name=name)


@keras.saving.register_keras_serializable(package="mixmo_tf")
class FusedBatchNorm(keras.layers.Layer):
  """BatchNorm over the channel axis of NHWC maps through TF's fused kernel.

  Keras 3's BatchNormalization computes moments and normalises with separate ops on the TF
  backend; `FusedBatchNormV3` does both (and the moving-average update) in one kernel, which
  measured 1.39x faster forward+backward for WRN-28-1 on this CPU (BUILD_NOTES.md). Same weights
  as Keras' layer (gamma, beta, moving_mean, moving_variance), same momentum convention; the moving
  variance is updated with the unbiased batch variance, as PyTorch does (docs/method.md §12.9).

  With `synchronized` (the default) and several replicas in sync, training normalises with the
  statistics of the global batch instead, as the official one-GPU runs do (docs/method.md §12.11,
  §18 item 2); on one replica the fused kernel runs unchanged.

  On other backends (JAX, PyTorch) the same weights go through `portable_call`, the same equations
  in `keras.ops` (float32 statistics, same momentum, epsilon and unbiased moving variance), so a
  `.keras` file loads and predicts the same on any backend. There `synchronized` has no effect:
  a JAX batch sharded by `keras.distribution` is one global array, whose moments are already the
  global batch's.
  """

  def __init__(self, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, **kwargs):
    super().__init__(**kwargs)
    self.momentum = momentum
    self.epsilon = epsilon
    self.synchronized = synchronized

  def build(self, input_shape):
    channels = (input_shape[-1],)
    weight = lambda name, init, trainable: self.add_weight(
        name=name, shape=channels, initializer=init, trainable=trainable, autocast=False)
    self.gamma = weight("gamma", "ones", True)
    self.beta = weight("beta", "zeros", True)
    self.moving_mean = weight("moving_mean", "zeros", False)
    self.moving_variance = weight("moving_variance", "ones", False)

  def call(self, inputs, training=None):
    if keras.backend.backend() != "tensorflow":
      return self.portable_call(inputs, training)
    import tensorflow as tf  # Lazily: the other backends run without TensorFlow installed.

    if training:
      replica = replica_context_in_sync() if self.synchronized else None
      if replica is not None:
        return self._synchronized_training_call(inputs, replica)
    fused = functools.partial(
        tf.raw_ops.FusedBatchNormV3, x=inputs, scale=self.gamma.value, offset=self.beta.value,
        mean=self.moving_mean.value, variance=self.moving_variance.value, epsilon=self.epsilon,
        data_format="NHWC")
    if training:
      outputs, mean, variance = fused(exponential_avg_factor=1.0 - self.momentum,
                                      is_training=True)[:3]
      self.moving_mean.assign(mean)
      self.moving_variance.assign(variance)
      return outputs
    return fused(is_training=False)[0]

  def _synchronized_training_call(self, inputs, replica):
    """Training step with the global batch's statistics: local per-channel sum, sum of squares
    and count (float32), summed over replicas by a differentiable all-reduce."""
    import tensorflow as tf

    x = tf.cast(inputs, tf.float32)
    axes = list(range(len(x.shape) - 1))
    count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
    local = [tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), count]
    total, total_squares, count = replica.all_reduce(tf.distribute.ReduceOp.SUM, local)
    mean = total / count
    variance = tf.maximum(total_squares / count - tf.square(mean), 0.0)  # Biased, as the kernel.
    scale = tf.math.rsqrt(variance + self.epsilon) * self.gamma.value
    outputs = (x - mean) * scale + self.beta.value
    # The fused kernel's update: (1 - f) * old + f * batch, unbiased variance (§12.9).
    factor = 1.0 - self.momentum
    unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
    self.moving_mean.assign((1.0 - factor) * self.moving_mean.value + factor * mean)
    self.moving_variance.assign((1.0 - factor) * self.moving_variance.value + factor * unbiased)
    return tf.cast(outputs, inputs.dtype)

  def portable_call(self, inputs, training):
    """The fused kernel's equations in `keras.ops`, for the backends other than TensorFlow.

    Training: biased batch mean / variance over N, H, W in float32 normalise; the moving statistics
    become (1 - f) * old + f * batch with f = 1 - momentum and the unbiased batch variance
    n / (n - 1) (docs/method.md §12.9). Inference: the moving statistics.
    """
    ops = keras.ops
    x = ops.cast(inputs, "float32")
    if training:
      axes = tuple(range(len(x.shape) - 1))
      mean = ops.mean(x, axis=axes)
      variance = ops.mean(ops.square(x - mean), axis=axes)  # Biased, as the kernel.
      count = math.prod(x.shape[:-1])  # Static on the non-TF backends (JAX traces fixed shapes).
      factor = 1.0 - self.momentum
      unbiased = variance * (count / max(count - 1, 1))
      self.moving_mean.assign((1.0 - factor) * self.moving_mean.value + factor * mean)
      self.moving_variance.assign((1.0 - factor) * self.moving_variance.value + factor * unbiased)
    else:
      mean, variance = self.moving_mean.value, self.moving_variance.value
    scale = ops.rsqrt(variance + self.epsilon) * self.gamma.value
    outputs = (x - mean) * scale + self.beta.value
    return ops.cast(outputs, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return dict(super().get_config(), momentum=self.momentum, epsilon=self.epsilon,
                synchronized=self.synchronized)


def replica_context_in_sync():
  """The current replica context when it spans more than one replica, else None (no strategy,
  one replica, or cross-replica context). TensorFlow backend only."""
  import tensorflow as tf

  if not tf.distribute.has_strategy():
    return None
  replica = tf.distribute.get_replica_context()
  if replica is None or replica.num_replicas_in_sync <= 1:
    return None
  return replica


def set_batch_norm_sync(model, enabled: bool) -> int:
  """Sets `synchronized` on every FusedBatchNorm of `model` (the `--sync_batch_norm` flag) and
  returns how many; takes effect at the next trace of the training step."""
  def walk(layer):
    for child in getattr(layer, "layers", ()):
      yield child
      yield from walk(child)

  layers = [layer for layer in walk(model) if isinstance(layer, FusedBatchNorm)]
  for layer in layers:
    layer.synchronized = bool(enabled)
  return len(layers)


def batch_norm(name=None):
  return FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def he_truncated_normal(fan_in):
  """Keras `he_normal` for a kernel whose fan-in Keras cannot infer (the stacked heads)."""
  return keras.initializers.TruncatedNormal(stddev=math.sqrt(2.0 / fan_in) / 0.87962566103423978)


@keras.saving.register_keras_serializable(package="mixmo_tf")
class DenseMultihead(keras.layers.Layer):
  """M dense heads d_i on one feature vector, as a single [M, D, K] kernel: [B, D] -> [B, M, K].

  Equal to M separate `Dense(K)` layers (same parameter count, M * (D * K + K)), in one einsum.
  """

  def __init__(self, num_members, units, kernel_initializer="he_normal", **kwargs):
    super().__init__(**kwargs)
    self.num_members = num_members
    self.units = units
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    dim = input_shape[-1]
    self.kernel = self.add_weight(name="kernel", shape=(self.num_members, dim, self.units),
                                  initializer=self.kernel_initializer)
    self.bias = self.add_weight(name="bias", shape=(self.num_members, self.units),
                                initializer="zeros")

  def call(self, inputs):
    kernel = keras.ops.cast(self.kernel, inputs.dtype)
    bias = keras.ops.cast(self.bias, inputs.dtype)
    return keras.ops.einsum("bd,mdk->bmk", inputs, kernel) + bias

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_members, self.units)

  def get_config(self):
    config = super().get_config()
    config.update(num_members=self.num_members, units=self.units,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config

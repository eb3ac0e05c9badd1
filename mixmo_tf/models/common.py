"""Pieces shared by the MixMo networks: stems, mixing, multi-head readout, the model class.

Porting constants from the official PyTorch implementation (docs/method.md §2.1):
- BatchNorm momentum 0.1 in PyTorch = 0.9 in Keras; epsilon 1e-5 (PyTorch default, Keras' is 1e-3).
- Conv / dense kernels: truncated normal cut at 2 std with std sqrt(2 / fan_in) / 0.8796 = Keras
  `he_normal`. No conv has a bias.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

from mixmo_tf.mixing import MixingLayer

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
  """

  def __init__(self, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, **kwargs):
    super().__init__(**kwargs)
    self.momentum = momentum
    self.epsilon = epsilon

  def build(self, input_shape):
    channels = (input_shape[-1],)
    weight = lambda name, init, trainable: self.add_weight(
        name=name, shape=channels, initializer=init, trainable=trainable, autocast=False)
    self.gamma = weight("gamma", "ones", True)
    self.beta = weight("beta", "zeros", True)
    self.moving_mean = weight("moving_mean", "zeros", False)
    self.moving_variance = weight("moving_variance", "ones", False)

  def call(self, inputs, training=None):
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

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return dict(super().get_config(), momentum=self.momentum, epsilon=self.epsilon)


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


class MixMoModel(keras.Model):
  """Base of the MixMo networks: a Keras functional model with M image inputs and optional masks.

  Inputs: M images [B, H, W, 3], then `masks` [B, M, h, w, 1] on the stems' output grid (optional).
  Output: logits [B, M, K]. `model([x] * M)` / `model.predict([x] * M)` run the inference path
  (encodings summed, Sec. 3.1); `model([x_0, .., x_{M-1}, masks], training=True)` mixes.
  Subclasses call `_build_graph` with their stem and trunk builders and store their constructor
  arguments in `_config` (returned by `get_config`).
  """

  def _build_graph(self, num_members, image_shape, stem_fn, trunk_fn, head_init, num_classes,
                   name, folded=False):
    if folded:
      # Inference-only variant: the stems are bias-free convolutions, so sum_i c_i(x) =
      # (sum_i c_i)(x): one stem whose kernel is the members' sum (`MixMoModel.folded`).
      images = [keras.Input(image_shape, name="image")]
      mixed = stem_fn("stem_folded")(images[0])
      inputs, grid = images, None
    else:
      images = [keras.Input(image_shape, name=f"image_{i}") for i in range(num_members)]
      stems = [stem_fn(f"stem_{i}") for i in range(num_members)]
      features = [stem(x) for stem, x in zip(stems, images)]
      grid = tuple(features[0].shape[1:3])
      masks = keras.Input((num_members,) + grid + (1,), name="masks", optional=True)
      mixed = MixingLayer(name="mixing")(features, masks=masks)
      inputs = images + [masks]
    pooled = trunk_fn(mixed)
    logits = DenseMultihead(num_members, num_classes, kernel_initializer=head_init,
                            name="heads")(pooled)
    # Keep logits float32 under mixed precision: the loss and metrics need the precision.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    super().__init__(inputs=inputs, outputs=logits, name=name)
    self.num_members = num_members
    self.is_folded = folded
    self.num_inputs = 1 if folded else num_members
    self.mask_shape = grid

  def __call__(self, inputs, *args, **kwargs):
    # Functional models check their input count before `call`: a list of M images means "no masks".
    if not self.is_folded:
      if not isinstance(inputs, (list, tuple, dict)) and self.num_members == 1:
        inputs = [inputs]  # a vanilla network takes a bare image batch too
      if isinstance(inputs, (list, tuple)) and len(inputs) == self.num_members:
        inputs = list(inputs) + [None]
    return super().__call__(inputs, *args, **kwargs)

  def folded(self) -> "MixMoModel":
    """The same network for inference with the M stems folded into one (exact: no bias, Sec. 3.1).

    Takes one image batch, returns the same member logits [B, M, K] as `model([x] * M)` at the
    cost of a single stem.
    """
    if self.is_folded:
      return self
    clone = type(self)(**dict(self._config, folded=True))
    for layer in clone.layers:
      if layer.weights and layer.name != "stem_folded":
        layer.set_weights(self.get_layer(layer.name).get_weights())
    kernel = sum(stem.kernel.value for stem in self.stem_layers())
    clone.get_layer("stem_folded").kernel.assign(kernel)
    return clone

  def stem_layers(self):
    return [self.get_layer(f"stem_{i}") for i in range(self.num_members)]

  def get_config(self):
    return dict(self._config)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)

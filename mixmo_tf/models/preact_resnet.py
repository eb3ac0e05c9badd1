"""PreActResNet-18-w with M stems and M heads for 64x64 inputs (Tiny ImageNet), docs/method.md §2.4.

Stem: 3x3 conv, stride 2, symmetric padding 1, 64 channels for every w, so MixMo mixes on a 32x32
grid. Stride on the first conv of a block (symmetric padding, as PyTorch); projection shortcut on the
pre-activated input; no final BN-ReLU; heads initialised N(0, 0.01).
"""

from __future__ import annotations

import keras

from mixmo_tf.models.arguments import check_model_arguments
from mixmo_tf.models.layers import batch_norm, conv
from mixmo_tf.models.network import MixMoModel


def _strided_conv(filters, kernel_size, strides, name):
  """PyTorch-style conv with symmetric `padding=1` (Keras 'same' pads bottom/right only)."""
  pad = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")
  layer = conv(filters, kernel_size, strides=strides, padding="valid", name=name)
  return lambda x: layer(pad(x))


def apply_preact_block(x, filters, strides, name):
  """One basic pre-activation block (docs/method.md §2.4)."""
  a = keras.layers.ReLU(name=f"{name}_relu1")(batch_norm(f"{name}_bn1")(x))
  h = _strided_conv(filters, 3, strides, f"{name}_conv1")(a)
  h = keras.layers.ReLU(name=f"{name}_relu2")(batch_norm(f"{name}_bn2")(h))
  h = conv(filters, 3, name=f"{name}_conv2")(h)
  if strides != 1 or x.shape[-1] != filters:
    x = conv(filters, 1, strides=strides, padding="valid", name=f"{name}_shortcut")(a)
  return keras.layers.Add(name=f"{name}_add")([h, x])


def apply_preact_trunk(x, width: int):
  """Everything after the stem: four groups of two blocks (64w .. 512w filters) and global
  average pooling -> [B, 512w]."""
  widths = (64 * width, 128 * width, 256 * width, 512 * width)
  for group, (filters, strides) in enumerate(zip(widths, (1, 2, 2, 2))):
    for block in range(2):
      x = apply_preact_block(x, filters, strides if block == 0 else 1,
                             name=f"group{group + 1}_block{block + 1}")
  return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def preact_resnet18_backbone(width: int = 1, image_shape=(64, 64, 3)) -> keras.Model:
  """The plain PreActResNet-18-`width` (one stem, no head) as a functional backbone: images ->
  pooled features [B, 512w]; `models.from_backbone` turns it into `PreActResNet18`'s network."""
  check_model_arguments("preact_resnet18", width=width)
  images = keras.Input(tuple(image_shape), name="image")
  features = apply_preact_trunk(_strided_conv(64, 3, 2, "stem")(images), width)
  return keras.Model(images, features, name=f"preact_resnet18_{width}")


@keras.saving.register_keras_serializable(package="mixmo_tf")
class PreActResNet18(MixMoModel):
  """MixMo PreActResNet-18-`width`; output logits [B, M, num_classes]."""

  def __init__(self, width=1, num_members=2, num_classes=200, image_shape=(64, 64, 3),
               name="preact_resnet18", folded=False):
    check_model_arguments("preact_resnet18", width=width, num_members=num_members)
    self._build_graph(num_members, tuple(image_shape),
                      lambda n: _strided_conv(64, 3, 2, n), lambda x: apply_preact_trunk(x, width),
                      keras.initializers.RandomNormal(stddev=0.01), num_classes, name, folded)
    self._config = dict(width=width, num_members=num_members, num_classes=num_classes,
                        image_shape=tuple(image_shape), name=name, folded=folded)

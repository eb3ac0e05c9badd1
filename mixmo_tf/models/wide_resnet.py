"""WideResNet-d-w with M stems and M heads, exactly as the official MixMo code (docs/method.md §2.1-2.2).

Pre-activation wide blocks; the stride sits on the *second* 3x3 conv of a block, padded at the bottom
and right only (Keras 'same'); projection shortcuts take the raw block input. M = 1 is the vanilla
WRN. Widths: stem 16, groups 16w / 32w / 64w.
"""

from __future__ import annotations

import keras

from mixmo_tf.models.arguments import check_model_arguments
from mixmo_tf.models.layers import batch_norm, conv, he_truncated_normal
from mixmo_tf.models.network import MixMoModel


def apply_wide_block(x, filters, strides, name):
  """One pre-activation wide block (docs/method.md §2.1, steps 1-5); no dropout."""
  h = keras.layers.ReLU(name=f"{name}_relu1")(batch_norm(f"{name}_bn1")(x))
  h = conv(filters, 3, name=f"{name}_conv1")(h)
  h = keras.layers.ReLU(name=f"{name}_relu2")(batch_norm(f"{name}_bn2")(h))
  h = conv(filters, 3, strides=strides, name=f"{name}_conv2")(h)
  if strides != 1 or x.shape[-1] != filters:
    x = conv(filters, 1, strides=strides, padding="valid", name=f"{name}_shortcut")(x)
  return keras.layers.Add(name=f"{name}_add")([h, x])


def apply_wide_trunk(x, depth: int, width: int):
  """Everything after the stem: three groups of (depth - 4) / 6 wide blocks (16w, 32w, 64w
  filters), the final BN-ReLU and global average pooling -> [B, 64w]."""
  blocks = (depth - 4) // 6
  widths = (16 * width, 32 * width, 64 * width)
  for group, (filters, strides) in enumerate(zip(widths, (1, 2, 2))):
    for block in range(blocks):
      x = apply_wide_block(x, filters, strides if block == 0 else 1,
                           name=f"group{group + 1}_block{block + 1}")
  x = keras.layers.ReLU(name="final_relu")(batch_norm("final_bn")(x))
  return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def wide_resnet_backbone(depth: int = 28, width: int = 10, image_shape=(32, 32, 3)) -> keras.Model:
  """The plain WRN-`depth`-`width` (one 16-filter stem, no head) as a functional backbone:
  images -> pooled features [B, 64w]; `models.from_backbone` turns it into `WideResNet`'s
  network (tests/test_backbone.py)."""
  check_model_arguments("wide_resnet", depth, width, 1)
  images = keras.Input(tuple(image_shape), name="image")
  features = apply_wide_trunk(conv(16, 3, name="stem")(images), depth, width)
  return keras.Model(images, features, name=f"wrn_{depth}_{width}")


@keras.saving.register_keras_serializable(package="mixmo_tf")
class WideResNet(MixMoModel):
  """MixMo WRN-`depth`-`width` for `num_members` inputs; output logits [B, M, num_classes]."""

  def __init__(self, depth=28, width=10, num_members=2, num_classes=100, image_shape=(32, 32, 3),
               name="wide_resnet", folded=False):
    check_model_arguments("wide_resnet", depth, width, num_members)
    self._build_graph(num_members, tuple(image_shape), lambda n: conv(16, 3, name=n),
                      lambda x: apply_wide_trunk(x, depth, width),
                      he_truncated_normal(64 * width), num_classes, name, folded)
    self._config = dict(depth=depth, width=width, num_members=num_members,
                        num_classes=num_classes, image_shape=tuple(image_shape), name=name,
                        folded=folded)

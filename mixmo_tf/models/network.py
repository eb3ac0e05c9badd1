"""`MixMoModel`: the base of every MixMo network, M image inputs and optional masks -> [B, M, K].

Backend-agnostic (docs/method.md §2.2): M stems, the `MixingLayer` (§3.1), a shared trunk, M heads.
"""

from __future__ import annotations

import keras

from mixmo_tf.core.mixing import MixingLayer
from mixmo_tf.models.layers import DenseMultihead


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
    return super().__call__(self._with_masks_slot(inputs), *args, **kwargs)

  def call(self, inputs, *args, **kwargs):
    # JAX's `predict` / `fit` reach `call` through `stateless_call`, not `__call__`: same padding.
    return super().call(self._with_masks_slot(inputs), *args, **kwargs)

  def _with_masks_slot(self, inputs):
    """`inputs` with `None` for the optional masks when only the M images are given."""
    if not self.is_folded:
      if not isinstance(inputs, (list, tuple, dict)) and self.num_members == 1:
        inputs = [inputs]  # a vanilla network takes a bare image batch too
      if isinstance(inputs, (list, tuple)) and len(inputs) == self.num_members:
        inputs = list(inputs) + [None]
    return inputs

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

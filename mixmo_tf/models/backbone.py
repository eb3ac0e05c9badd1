"""MixMo for any Keras network: `from_backbone` turns a backbone into an M-input, M-head network.

The layers from the input through `split` (default: the first convolution reached from the input,
the encoder of the paper's Sec. 3.1; docs/method.md §2.5) become M stems, copies of that part;
the `MixingLayer` merges their feature maps; the rest of the backbone is the shared trunk; a
global average pooling (where the output is a feature map) and M dense heads follow. The result is
a `MixMoModel` like the hand-built networks: `model([x] * M)`, `model.predict([x] * M)`, masks on
the stems' output grid, `.keras` round trips on every backend, `folded()` for inference.

Each stem copy starts as the backbone's stem with its convolution scaled by 1/M, so at step 0 the
wrapped network on M copies of one image computes the backbone's own features (pretrained weights
included). Input scaling is single: when the stem holds the backbone's own Rescaling or
Normalization layers, the run feeds raw pixel values (`input_scaling == "backbone"`,
`models.adapt_info`), else the dataset's mean and std (`"dataset"`).
"""

from __future__ import annotations

import json
from typing import List, Optional, Sequence

import keras
from absl import logging

from mixmo_tf.models.layers import he_truncated_normal
from mixmo_tf.models.network import MixMoModel

# A stem made only of these before its final convolution sums exactly: folded at inference.
LINEAR_LAYERS = (keras.layers.InputLayer, keras.layers.ZeroPadding2D, keras.layers.Rescaling,
                 keras.layers.Normalization)
SCALING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)
CONVOLUTIONS = (keras.layers.Conv2D,)
SOURCES = ("keras_applications", "keras_hub", "file")  # --model=<source>:<name or path>
_LOGGED_UNFOLDABLE = set()


def _producer(tensor):
  """The layer that produced a symbolic tensor of a functional graph."""
  return tensor._keras_history.operation  # pylint: disable=protected-access


def _inputs_of(layer, layer_ids) -> List:
  """The tensors `layer` consumes inside a graph whose layers have the ids `layer_ids` (a layer
  shared with other graphs has one node per graph)."""
  tensors = []
  for node in layer._inbound_nodes:  # pylint: disable=protected-access
    if all(id(_producer(t)) in layer_ids for t in node.input_tensors):
      tensors += list(node.input_tensors)
  return tensors


def _check_functional(backbone) -> None:
  if not isinstance(backbone, keras.Model) or len(getattr(backbone, "inputs", None) or ()) != 1:
    raise ValueError(f"from_backbone needs a functional keras.Model with one image input (a "
                     f"user's, keras.applications.*(include_top=False), a KerasHub Backbone), "
                     f"got {type(backbone).__name__}.")


def find_split(backbone, split: Optional[str] = None):
  """The layer that ends the stem: `split` by name, else the first convolution reached from the
  input (the backbone's layers are in topological order)."""
  if split:
    try:
      return backbone.get_layer(split)
    except ValueError:
      raise ValueError(f"split={split!r} is not a layer of {backbone.name!r} (its layers: "
                       f"{', '.join(l.name for l in backbone.layers[:12])}, ...).") from None
  for layer in backbone.layers:
    if isinstance(layer, CONVOLUTIONS):
      return layer
  raise ValueError(f"{backbone.name!r} has no Conv2D to end the stems at; pass split=<layer>.")


def stem_layers(backbone, split_layer) -> List:
  """The layers between the input and `split_layer` (included), in graph order."""
  ids = {id(l) for l in backbone.layers}
  found, stack = {}, [split_layer]
  while stack:
    layer = stack.pop()
    if id(layer) in found:
      continue
    found[id(layer)] = layer
    stack += [_producer(t) for t in _inputs_of(layer, ids)]
  return [l for l in backbone.layers if id(l) in found]


def check_no_crossing(backbone, stem: Sequence, split_layer) -> None:
  """ValueError naming the layers of a branch that crosses the split (a skip connection from
  inside the stem to after it): the stems and the trunk would not be one chain."""
  inside, ids = {id(l) for l in stem}, {id(l) for l in backbone.layers}
  for layer in backbone.layers:
    if id(layer) in inside:
      continue
    for tensor in _inputs_of(layer, ids):
      producer = _producer(tensor)
      if id(producer) in inside and producer is not split_layer:
        raise ValueError(
            f"The split after {split_layer.name!r} is crossed by a branch: {layer.name!r} (after "
            f"the split) reads the output of {producer.name!r} (before it). Choose a split that "
            f"no skip connection crosses, e.g. split={producer.name!r} or a later layer.")


def _clone(model, name: str):
  """A copy of a functional sub-model with fresh layers of the same configurations."""
  clone = keras.models.clone_model(model)
  clone.name = name
  return clone


@keras.saving.register_keras_serializable(package="mixmo_tf")
class BackboneMixMo(MixMoModel):
  """A MixMo network around a functional backbone (see the module doc and `from_backbone`).

  Args:
    backbone: a functional keras.Model with one image input (or its serialized config).
    num_members: M. num_classes: K.
    image_shape: (H, W, C) when the backbone's input shape has unknown dimensions.
    split: the name of the layer that ends the stem (default: the first Conv2D).
    folded: the inference form with one stem (`folded()` builds it).
  """

  def __init__(self, backbone, num_members: int = 2, num_classes: int = 10, image_shape=None,
               split: Optional[str] = None, name: str = "mixmo_backbone", folded: bool = False):
    if isinstance(backbone, dict):
      backbone = keras.saving.deserialize_keras_object(backbone)
    _check_functional(backbone)
    if num_members < 1 or num_classes < 1:
      raise ValueError(f"num_members and num_classes must be >= 1, got {num_members}, "
                       f"{num_classes}.")
    shape = tuple(image_shape) if image_shape else tuple(backbone.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
      raise ValueError(f"{backbone.name!r} takes images of shape {shape}: pass image_shape=(H, W, "
                       f"C) so that the stems' output grid, where the masks live, is known.")
    split_layer = find_split(backbone, split)
    stem = stem_layers(backbone, split_layer)
    check_no_crossing(backbone, stem, split_layer)
    stem_model = keras.Model(backbone.inputs[0], split_layer.output, name="stem")
    trunk_model = keras.Model(split_layer.output, backbone.output, name="trunk")
    self.linear_stem = (isinstance(stem[-1], CONVOLUTIONS)
                        and all(isinstance(l, LINEAR_LAYERS) for l in stem[:-1]))
    self.input_scaling = ("backbone" if any(isinstance(l, SCALING_LAYERS) for l in stem)
                          else "dataset")

    def trunk(x):
      x = trunk_model(x)
      if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
      if len(x.shape) != 2:
        raise ValueError(f"{backbone.name!r} outputs shape {x.shape}: expected a feature map "
                         f"[B, h, w, C] or a vector [B, D].")
      return x

    self._build_graph(num_members, shape, lambda n: _clone(stem_model, n), trunk,
                      he_truncated_normal(int(backbone.output.shape[-1])), num_classes, name,
                      folded)
    if not folded:
      for i in range(num_members):
        _copy_scaled(stem_model, self.get_layer(f"stem_{i}"), 1.0 / num_members)
    self.split = split_layer.name
    self._config = dict(backbone=keras.saving.serialize_keras_object(backbone),
                        num_members=num_members, num_classes=num_classes, image_shape=shape,
                        split=split_layer.name, name=name, folded=folded)

  def get_config(self):
    # Keras tracks dicts set on a model (TrackedDict); the backbone's config goes out as plain
    # JSON values, as it came in.
    return json.loads(json.dumps(dict(self._config)))

  def folded(self) -> MixMoModel:
    """The inference form with one stem whose convolution is the sum of the M copies' (exact for
    a linear stem, Sec. 3.1); a stem with other layers runs as M stems (logged once)."""
    if self.is_folded:
      return self
    if not self.linear_stem:
      if self.name not in _LOGGED_UNFOLDABLE:
        _LOGGED_UNFOLDABLE.add(self.name)
        logging.info("%s: the stem (through %r) is not a chain of padding, rescaling or "
                     "normalisation layers ending in a convolution; inference runs the %d stems "
                     "on the same image.", self.name, self.split, self.num_members)
      return self
    clone = type(self)(**dict(self.get_config(), folded=True))
    for layer in clone.layers:
      if layer.weights and layer.name != "stem_folded":
        layer.set_weights(self.get_layer(layer.name).get_weights())
    stems = self.stem_layers()
    for target, *sources in zip(clone.get_layer("stem_folded").layers,
                                *[s.layers for s in stems]):
      if isinstance(target, CONVOLUTIONS):
        target.set_weights([sum(w) for w in zip(*[s.get_weights() for s in sources])])
      else:
        target.set_weights(sources[0].get_weights())
    return clone


def _copy_scaled(source, target, scale: float) -> None:
  """Copies the weights of stem `source` into its clone `target`, convolutions scaled."""
  for src, dst in zip(source.layers, target.layers):
    weights = src.get_weights()
    if isinstance(src, CONVOLUTIONS):
      weights = [w * scale for w in weights]
    dst.set_weights(weights)


def from_backbone(backbone, num_members: int, num_classes: int, image_shape=None,
                  split: Optional[str] = None, name: str = "mixmo_backbone") -> BackboneMixMo:
  """A MixMo network around `backbone` (see the module doc): M stems through `split`, the
  `MixingLayer`, the rest of the backbone shared, pooling if needed, M heads.

    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                                   input_shape=(32, 32, 3))
    model = mixmo_tf.models.from_backbone(backbone, num_members=2, num_classes=10)
    logits = model.predict([x, x])  # [N, 2, 10]
  """
  return BackboneMixMo(backbone, num_members, num_classes, image_shape, split, name)


def parse_source(model: str):
  """(source, argument) of a `--model` naming a wrapped backbone, or None for a built-in name."""
  source, sep, argument = model.partition(":")
  if not sep:
    return None
  if source not in SOURCES or not argument:
    raise ValueError(f"--model={model!r} is not valid; expected a built-in name or "
                     f"<source>:<name or path> with source one of {', '.join(SOURCES)}.")
  return source, argument


def load_backbone(model: str, image_shape):
  """The backbone a `--model=<source>:<argument>` names: keras.applications (random weights),
  a KerasHub preset folder (its weights), or a saved .keras backbone (its weights)."""
  source, argument = parse_source(model)
  if source == "keras_applications":
    builder = getattr(keras.applications, argument, None)
    if builder is None:
      raise ValueError(f"--model={model!r}: keras.applications has no {argument!r}.")
    return builder(include_top=False, weights=None, input_shape=tuple(image_shape))
  if source == "keras_hub":
    try:
      import keras_hub
    except ImportError:
      raise ValueError(f"--model={model!r} needs KerasHub: pip install keras-hub.") from None
    return keras_hub.models.Backbone.from_preset(argument)
  import mixmo_tf  # noqa: F401  (registers the custom layers for safe-mode loading)
  try:
    return keras.models.load_model(argument, safe_mode=True)
  except Exception as e:  # pylint: disable=broad-except  (one line naming the file)
    raise ValueError(f"--model={model!r}: cannot load {argument} as a Keras backbone "
                     f"({type(e).__name__}: {' '.join(str(e).split())[:300]}).") from None

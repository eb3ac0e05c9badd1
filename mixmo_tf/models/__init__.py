"""The networks: WideResNet and PreActResNet-18 with M stems and heads, any Keras backbone wrapped
(`from_backbone`), and the one registry.

`MODELS` maps each built-in `--model` name to its class; `--model=<source>:<name or path>` wraps a
backbone (`backbone.SOURCES`: keras_applications, keras_hub, file). `build_model(name, ...)`
builds a built-in one and `build_from_config(config, info)` the network a run trains (training,
evaluation from checkpoints and export agree on it).
"""

import dataclasses

from mixmo_tf.models.backbone import BackboneMixMo, from_backbone, load_backbone, parse_source
from mixmo_tf.models.layers import DenseMultihead, FusedBatchNorm
from mixmo_tf.models.network import MixMoModel
from mixmo_tf.models.preact_resnet import PreActResNet18
from mixmo_tf.models.wide_resnet import WideResNet

MODELS = {"wide_resnet": WideResNet, "preact_resnet18": PreActResNet18}


def build_model(name: str, **kwargs) -> MixMoModel:
  """Builds a registered MixMo network, e.g. build_model("wide_resnet", depth=28, width=10)."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
  return MODELS[name](**kwargs)


def model_kwargs(config, info) -> dict:
  """The network arguments of a run: from its Config (architecture) and DataInfo (classes, shape)."""
  kwargs = dict(num_members=config.num_members, num_classes=info.num_classes,
                image_shape=tuple(info.image_shape), width=config.width)
  if config.model == "wide_resnet":
    kwargs["depth"] = config.depth
  return kwargs


def build_from_config(config, info) -> MixMoModel:
  """The network a run trains (training, evaluation from checkpoints and export agree on it):
  a built-in one, or the backbone `--model=<source>:<argument>` names, wrapped (--depth and
  --width are the built-in networks' and unused there)."""
  if parse_source(config.model):
    backbone = load_backbone(config.model, info.image_shape)
    return from_backbone(backbone, config.num_members, info.num_classes, info.image_shape)
  return build_model(config.model, **model_kwargs(config, info))


# What the pipeline feeds a network whose stem scales its inputs itself: raw pixel values.
RAW_PIXELS = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255.0,) * 3)


def adapt_info(network, info):
  """`info` with the normalisation the network expects, so that input scaling happens once: the
  dataset's mean and std, or raw pixel values (x / 255 undone) for a wrapped backbone whose stem
  holds its own Rescaling / Normalization layers (`input_scaling == "backbone"`)."""
  if getattr(network, "input_scaling", "dataset") == "backbone":
    return dataclasses.replace(info, **RAW_PIXELS)
  return info


__all__ = ["MODELS", "BackboneMixMo", "DenseMultihead", "FusedBatchNorm", "MixMoModel",
           "PreActResNet18", "WideResNet", "adapt_info", "build_model", "build_from_config",
           "from_backbone", "model_kwargs"]

"""The networks: WideResNet and PreActResNet-18 with M stems and heads, and the one registry.

`MODELS` maps each `--model` name to its class; `build_model(name, ...)` builds one and
`build_from_config(config, info)` builds the network a run trains (training, evaluation from
checkpoints and export agree on it).
"""

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
  """The network a run trains (training, evaluation from checkpoints and export agree on it)."""
  return build_model(config.model, **model_kwargs(config, info))


__all__ = ["MODELS", "DenseMultihead", "FusedBatchNorm", "MixMoModel", "PreActResNet18",
           "WideResNet", "build_model", "build_from_config", "model_kwargs"]

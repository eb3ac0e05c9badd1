"""Model registry: `build_model(name, ...)`, and `build_from_config` for a run's network."""

from mixmo_tf.models.common import DenseMultihead, MixMoModel
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

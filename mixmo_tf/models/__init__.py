"""Model registry: `build_model(name, ...)`."""

from mixmo_tf.models.common import DenseMultihead, MixMoModel
from mixmo_tf.models.preact_resnet import PreActResNet18
from mixmo_tf.models.wide_resnet import WideResNet

MODELS = {"wide_resnet": WideResNet, "preact_resnet18": PreActResNet18}


def build_model(name: str, **kwargs) -> MixMoModel:
  """Builds a registered MixMo network, e.g. build_model("wide_resnet", depth=28, width=10)."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
  return MODELS[name](**kwargs)

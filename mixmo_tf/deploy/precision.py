"""The exported network computes in float32, whatever precision trained it (any Keras backend).

A `.keras` file saved under mixed_bfloat16 (or float16) can reload computing in that precision:
its layers' configs carry their dtype policy, and the process-wide policy applies to the layers a
network builds itself. Serving runtimes and the exported artifacts' contract are float32, so
`float32_network` rebuilds such a network from its config under float32 and copies its weights.
"""

from __future__ import annotations

import contextlib

import numpy as np

FLOAT32 = "float32"
REDUCED = ("bfloat16", "float16", "mixed_bfloat16", "mixed_float16")


def all_layers(network):
  """Every layer of `network`, nested models' layers included."""
  for layer in getattr(network, "layers", ()):
    yield layer
    yield from all_layers(layer)


def computes_in_float32(network) -> bool:
  """Whether `network` and every layer in it compute (and keep their variables) in float32."""
  layers = [network] + list(all_layers(network))
  computes = all(str(getattr(layer, "compute_dtype", FLOAT32)) == FLOAT32 for layer in layers)
  return computes and all(str(v.dtype) == FLOAT32 for v in network.weights
                          if "float" in str(v.dtype))


def float32_config(config):
  """`config` (a Keras serialized config) with every reduced-precision dtype policy -> float32."""
  if isinstance(config, list):
    return [float32_config(value) for value in config]
  if not isinstance(config, dict):
    return config
  out = {}
  for key, value in config.items():
    if key == "dtype" and isinstance(value, str) and value in REDUCED:
      value = FLOAT32
    elif (key == "dtype" and isinstance(value, dict) and "DTypePolicy" in
          str(value.get("class_name", "")) and value.get("config", {}).get("name") in REDUCED):
      value = dict(value, config=dict(value["config"], name=FLOAT32))
    out[key] = float32_config(value)
  return out


@contextlib.contextmanager
def float32_policy():
  """Keras' process-wide dtype policy set to float32 for the block (what a network builds inside,
  e.g. `MixMoModel.folded`'s clone, computes in float32), the previous policy restored after."""
  import keras
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(FLOAT32)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def folded_float32(network):
  """The folded (one-stem) form of `network`, computing in float32 (`float32_network`): what
  every deployment artifact holds."""
  with float32_policy():
    return float32_network(float32_network(network).folded())


def float32_network(network):
  """`network` itself if it computes in float32, else the same network rebuilt from its config
  under the float32 policy with its weights copied (cast to float32); ValueError if the rebuilt
  network's weights do not line up with the original's."""
  import keras
  if computes_in_float32(network):
    return network
  with float32_policy():
    clone = type(network).from_config(float32_config(network.get_config()))
  sources, targets = network.weights, clone.weights
  if [tuple(v.shape) for v in sources] != [tuple(v.shape) for v in targets]:
    raise ValueError(f"{network.name}: rebuilding it in float32 gave other weights "
                     f"({len(targets)} variables for {len(sources)}).")
  for source, target in zip(sources, targets):
    target.assign(np.asarray(keras.ops.convert_to_numpy(source.value)).astype(str(target.dtype)))
  if not computes_in_float32(clone):
    raise ValueError(f"{network.name}: some layers still compute in reduced precision after "
                     "rebuilding it under the float32 policy.")
  return clone

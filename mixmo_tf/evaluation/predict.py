"""The one prediction path, on every backend: uint8 image batches in, member logits [N, M, K] out.

Training-time evaluation (both engines), `evaluate`, corruptions, OOD, `tables` inputs,
`baselines.ensemble` and the accelerator benchmark all go through `Predictor` and
`predict_batches` (docs/method.md §10.1): the images are normalised with the dataset's statistics,
the same image enters every stem (or the folded stem), BN runs in inference mode, one forward pass
per batch. Sources: NumPy arrays, `data.datasets.InMemory`, tf.data datasets, or any iterable of
batches. A serving SavedModel is one more source where TensorFlow is importable.
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

BATCH_SIZE = 500


def normalise(images, mean, std) -> np.ndarray:
  """uint8 images -> float32 (x / 255 - mean) / std, no augmentation (docs/method.md §9); the
  same float32 operations, in the same order, as `core.augment.normalize` in the train step."""
  x = np.asarray(images).astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _forward(network, num_inputs: int, x):
  return network([x] * num_inputs, training=False)


class Predictor:
  """Member logits [N, M, K] (float32 NumPy) of uint8 images [N, H, W, 3].

  `from_network(network, info)` serves a Keras MixMo network on any backend, compiled: Keras'
  `predict_on_batch` (jit on JAX) elsewhere, a tf.function of the forward pass on TensorFlow, where
  `predict_on_batch` would run the whole batch on every replica of a tf.distribute strategy (the
  tf.function reads the replicas' shared weights in cross-replica context). `network` is kept for
  the plots.
  """

  def __init__(self, predict_fn: Callable, num_members: int, network=None):
    self._predict = predict_fn
    self.num_members = int(num_members)
    self.network = network

  @classmethod
  def from_network(cls, network, info) -> "Predictor":
    import keras

    from mixmo_tf.models import adapt_info
    info = adapt_info(network, info)  # The normalisation the network expects (idempotent).
    mean, std = tuple(info.mean), tuple(info.std)
    num_inputs = getattr(network, "num_inputs", network.num_members)
    if keras.backend.backend() == "tensorflow":
      import tensorflow as tf
      # A partial, not a lambda: TensorFlow counts traces per code object and warns of retracing
      # once a process builds a few predictors.
      forward = tf.function(functools.partial(_forward, network, num_inputs),
                            reduce_retracing=True)
      run = lambda x: forward(x).numpy()
    else:
      run = lambda x: network.predict_on_batch([x] * num_inputs)
    return cls(lambda images: run(normalise(images, mean, std)), network.num_members, network)

  @classmethod
  def from_saved_model(cls, path: str) -> "Predictor":
    from mixmo_tf.deploy.tf_saved_model import SavedModelLogits
    source = SavedModelLogits(path)
    return cls(source, source.num_members)

  def __call__(self, images) -> np.ndarray:
    return np.asarray(self._predict(images), np.float32)


def _batches(data, batch_size: int) -> Iterable[Tuple[np.ndarray, Optional[np.ndarray]]]:
  """(images, labels or None) batches of an array, an (images, labels) pair, InMemory, a tf.data
  dataset (of examples or of batches) or an iterable of batches / (images, labels) pairs."""
  if isinstance(data, np.ndarray):
    data = (data, None)
  if hasattr(data, "batches"):  # data.datasets.InMemory and other example collections.
    yield from data.batches(batch_size)
    return
  if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
    images, labels = data
    for start in range(0, len(images), batch_size):
      yield images[start:start + batch_size], (
          None if labels is None else np.asarray(labels)[start:start + batch_size])
    return
  if hasattr(data, "element_spec"):  # A tf.data dataset.
    spec = data.element_spec
    image_spec = spec[0] if isinstance(spec, tuple) else spec
    if len(image_spec.shape) == 3:
      data = data.batch(batch_size)
    data = data.as_numpy_iterator()
  for batch in data:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
      yield np.asarray(batch[0]), np.asarray(batch[1])
    else:
      yield np.asarray(batch), None


def predict_batches(predictor: Predictor, data, batch_size: int = BATCH_SIZE,
                    name: str = "dataset") -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """(member logits [N, M, K], labels [N] or None) of every image of `data` (see `_batches`).

  Raises ValueError naming `name` if it holds no image.
  """
  logits, labels = [], []
  for images, y in _batches(data, batch_size):
    if len(images):
      logits.append(predictor(images))
      labels.append(y)
  if not logits:
    raise ValueError(f"{name} has no examples.")
  return np.concatenate(logits), (None if labels[0] is None else np.concatenate(labels))


def load_predictor(path: str, allow_running: bool = False):
  """(Predictor, RunFolder) for a run folder (its model.keras, else its newest checkpoint), a
  .keras file in one, or a serving SavedModel in one. `.keras` files load in Keras' safe mode."""
  from mixmo_tf.deploy import is_saved_model
  from mixmo_tf.run_folder import RunFolder
  saved_model = is_saved_model(path)
  model_file = os.path.isfile(path) and path.endswith(".keras")
  run_path = os.path.dirname(os.path.normpath(path)) if saved_model or model_file else path
  if not (saved_model or model_file or os.path.isdir(path)):
    raise ValueError(f"{path!r} is neither a run folder, a .keras file nor a SavedModel.")
  folder = RunFolder.open(run_path or ".", allow_running)
  if saved_model:
    return Predictor.from_saved_model(path), folder
  info = folder.read_data_info()
  if model_file or folder.model_path():
    network = load_network(path if model_file else folder.model_path())
  elif folder.latest_checkpoint():
    from mixmo_tf.models import build_from_config
    network = build_from_config(folder.read_config(), info)
    folder.load_network_weights(network)
  else:
    raise ValueError(f"{folder.path!r} holds neither {os.path.basename(folder.file('model.keras'))}"
                     " nor a checkpoint: nothing to evaluate yet.")
  return Predictor.from_network(network, info), folder


def load_network(path: str):
  """A MixMo network from a .keras file, in safe mode; ValueError naming the file if it is not
  one (corrupt, not a Keras file, or refused by safe mode)."""
  import keras

  import mixmo_tf  # noqa: F401  (registers the custom layers for safe-mode loading)
  if os.path.isfile(path) and not zipfile.is_zipfile(path):  # Keras would say "File not found".
    raise ValueError(f"Cannot load {path} as a MixMo network: it is not a .keras (zip) archive "
                     "(truncated or overwritten?).")
  try:
    network = keras.models.load_model(path, safe_mode=True)
  except Exception as e:  # pylint: disable=broad-except  (any failure: one line naming the file)
    raise ValueError(f"Cannot load {path} as a MixMo network ({type(e).__name__}: "
                     f"{' '.join(str(e).split())[:300]}).") from None
  if not hasattr(network, "num_members"):
    raise ValueError(f"{path} holds a {type(network).__name__}, not a MixMo network.")
  return network

"""The one prediction path: uint8 images -> normalised input -> member logits [N, M, K] -> ensemble.

Training-time evaluation, `evaluate`, corruptions, OOD, export and the ensemble baselines all go
through `Predictor` / `predict_dataset` (docs/method.md §10.1): the same image enters every stem
(or the folded stem), BN in inference mode, one forward pass.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from mixmo_tf import data as data_lib
from mixmo_tf.data_info import load_data_info

BATCH_SIZE = 500


def preprocess(images, mean, std):
  """uint8 images -> normalised float32, no augmentation (docs/method.md §9)."""
  return data_lib.normalize(tf.cast(images, tf.float32) / 255.0, mean, std)


def member_logits(model, x):
  """Inference forward pass: float32 member logits [B, M, K] of normalised images `x`."""
  return tf.cast(model([x] * model.num_inputs, training=False), tf.float32)


def ensemble_probabilities(logits, mode: str = "logits"):
  """Ensemble probabilities [B, K] from member logits (TF twin of metrics.ensemble_probs):
  softmax of the mean logit ('logits', the paper's rule, §10.1) or mean softmax ('probs')."""
  if mode == "logits":
    return tf.nn.softmax(tf.reduce_mean(logits, axis=1), axis=-1)
  if mode == "probs":
    return tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=1)
  raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}.")


class Predictor:
  """Member logits [N, M, K] for uint8 images, from a Keras model or a SavedModel."""

  def __init__(self, predict_fn: Callable, num_members: int, model=None):
    self._predict = predict_fn
    self.num_members = num_members
    self.model = model

  @classmethod
  def from_keras(cls, model, info):
    @tf.function
    def predict(images):
      return member_logits(model, preprocess(images, info.mean, info.std))
    return cls(predict, model.num_members, model)

  @classmethod
  def from_saved_model(cls, path):
    serve = tf.saved_model.load(path).signatures["serving_default"]

    def predict(images):
      # Member probabilities -> log-probabilities: softmax(log p) = p, so every metric that uses
      # member softmaxes or their mean logit is unchanged up to a per-member constant shift.
      return tf.math.log(serve(images=images)["member_probs"] + 1e-30)
    return cls(predict, int(serve.structured_outputs["member_probs"].shape[1]))

  def __call__(self, images):
    return self._predict(images)


def predict_dataset(predictor: Predictor, dataset: tf.data.Dataset, batch_size: int = BATCH_SIZE,
                    name: str = "dataset"):
  """Runs `predictor` over (uint8 image, label) pairs; returns (logits [N, M, K], labels [N]).

  Raises ValueError naming `name` if the dataset holds no example.
  """
  logits, labels = [], []
  for images, y in dataset.batch(batch_size).prefetch(data_lib.AUTOTUNE):
    logits.append(np.asarray(predictor(images)))
    labels.append(y.numpy())
  if not logits:
    raise ValueError(f"{name} has no examples.")
  return np.concatenate(logits), np.concatenate(labels)


def read_run_files(run_dir: str):
  """(DataInfo or None, config dict or None) from a run folder's data_info.json / config.json."""
  info_path = os.path.join(run_dir, "data_info.json")
  config_path = os.path.join(run_dir, "config.json")
  info = load_data_info(info_path) if os.path.exists(info_path) else None
  config = None
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return info, config


def run_folder(path: str) -> str:
  """The run folder of a run dir, a model file in one, or a SavedModel in one."""
  is_saved_model = os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb"))
  return path if os.path.isdir(path) and not is_saved_model else os.path.dirname(
      os.path.normpath(path))


def load_predictor(path: str):
  """(Predictor, DataInfo or None, config dict or None) from a run dir, a .keras file or a
  SavedModel. `.keras` files load in safe mode (no Lambda layers)."""
  import keras
  import mixmo_tf  # noqa: F401  (registers the custom layers for safe-mode loading)
  is_saved_model = os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb"))
  # A run directory holds config.json and data_info.json; a model file or SavedModel sits in one.
  run_dir = run_folder(path)
  info, config = read_run_files(run_dir)
  if is_saved_model:
    return Predictor.from_saved_model(path), info, config
  if path.endswith(".keras"):
    model = keras.models.load_model(path, safe_mode=True)
  elif os.path.exists(os.path.join(path, "model.keras")):
    model = keras.models.load_model(os.path.join(path, "model.keras"), safe_mode=True)
  elif config is not None and info is not None and _latest_checkpoint(path):
    model = model_from_checkpoint(path, config, info)
  else:
    raise ValueError(f"{path!r} is neither a run directory (model.keras or checkpoints/), a .keras "
                     "file nor a SavedModel.")
  if info is None:
    raise ValueError(f"{os.path.join(run_dir, 'data_info.json')} is missing: cannot normalise "
                     "the test images.")
  return Predictor.from_keras(model, info), info, config


def _latest_checkpoint(run_dir: str) -> Optional[str]:
  """The newest checkpoint of either loop in a run folder (`.weights.npz` or tf.train)."""
  from mixmo_tf import array_checkpoint
  directory = os.path.join(run_dir, "checkpoints")
  arrays = array_checkpoint.prefixes(directory)
  if arrays:
    return arrays[-1]
  # A running TF loop may be replacing its state file this instant (seen as a parse error):
  # then the newest index file (written after its data) names the newest checkpoint.
  indexed = sorted((p[:-len(".index")] for p in glob.glob(os.path.join(directory, "*.index"))),
                   key=array_checkpoint.step_of)
  return tf.train.latest_checkpoint(directory) or (indexed[-1] if indexed else None)


def model_from_checkpoint(run_dir: str, config: dict, info, checkpoint: Optional[str] = None):
  """The run's network with the weights of its latest (or the given) checkpoint: a tf.train
  checkpoint of the TensorFlow loop or a `.weights.npz` of the Keras-native loop."""
  from mixmo_tf import array_checkpoint
  from mixmo_tf.config import Config
  from mixmo_tf.models import build_from_config
  model = build_from_config(Config.from_dict(config), info)
  path = checkpoint or _latest_checkpoint(run_dir)
  if path and os.path.exists(path + array_checkpoint.SUFFIX):
    array_checkpoint.load(path + array_checkpoint.SUFFIX, {"network": model.variables},
                          partial=True)
  else:
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
  return model

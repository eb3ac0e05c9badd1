"""SavedModel export with a one-image-batch serving signature, and `python -m mixmo_tf.export`.

The signature takes raw uint8 images [N, H, W, 3], normalises them, feeds the same batch to all M
stems (one forward pass, Sec. 3.1) and returns {'probs': ensemble [N, K], 'member_probs': [N, M, K]}.
The SavedModel needs only TensorFlow to load: no mixmo_tf, no Keras custom objects.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf

from mixmo_tf import predict
from mixmo_tf.data_info import load_data_info


class _ServingModule(tf.Module):

  def __init__(self, model, mean, std, image_shape, ensemble):
    super().__init__()
    self.model = model.folded()  # One stem instead of M: the same function, exactly (Sec. 3.1).
    self._mean = tuple(mean)
    self._std = tuple(std)
    self._ensemble = ensemble
    self._image_shape = tuple(image_shape)
    spec = tf.TensorSpec([None] + list(image_shape), tf.uint8, name="images")
    self.serve = tf.function(self._serve, input_signature=[spec])

  def _serve(self, images):
    # Signatures do not enforce static dimensions: check rank and size with a clear message.
    expected = "uint8 images of shape [N, %d, %d, %d]" % self._image_shape
    shape = tf.shape(images)
    rank_ok = tf.debugging.assert_equal(tf.size(shape), 4, message=f"expected {expected}")
    with tf.control_dependencies([rank_ok]):  # before any op that needs rank 4
      size_ok = tf.debugging.assert_equal(
          tf.concat([shape, [0, 0, 0, 0]], 0)[1:4], tf.constant(self._image_shape, tf.int32),
          message=f"expected {expected}")
    with tf.control_dependencies([size_ok]):
      images = tf.identity(images)
    logits = predict.member_logits(self.model, predict.preprocess(images, self._mean, self._std))
    return {"probs": predict.ensemble_probabilities(logits, self._ensemble),
            "member_probs": tf.nn.softmax(logits, axis=-1)}


def export_saved_model(model, info, path: str, ensemble: str = "logits") -> str:
  """Writes a SavedModel at `path` (atomically: a temporary folder renamed at the end)."""
  module = _ServingModule(model, info.mean, info.std, info.image_shape, ensemble)
  tmp = path.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
  if os.path.exists(path):
    shutil.rmtree(path)
  os.replace(tmp, path)
  return path


def main(argv):
  del argv
  from absl import flags
  import keras
  run_dir = flags.FLAGS.run_dir
  from mixmo_tf.run_lock import check_not_running
  check_not_running(run_dir, flags.FLAGS.allow_running)
  export_dir = flags.FLAGS.export_dir or os.path.join(run_dir, "saved_model")
  model_path = os.path.join(run_dir, "model.keras")
  if not os.path.exists(model_path):
    raise ValueError(f"--run_dir={run_dir!r} has no model.keras (train the run to the end first).")
  import mixmo_tf  # noqa: F401  (registers the custom layers for safe-mode loading)
  model = keras.models.load_model(model_path, safe_mode=True)
  info = load_data_info(os.path.join(run_dir, "data_info.json"))
  with open(os.path.join(run_dir, "config.json")) as f:
    ensemble = json.load(f).get("ensemble", "logits")
  print(export_saved_model(model, info, export_dir, ensemble))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("run_dir", None, "A finished training run's output_dir.")
  flags.DEFINE_string("export_dir", "", "Where to write the SavedModel (default run_dir/saved_model).")
  flags.DEFINE_bool("allow_running", False, "Export a run that is still training.")
  flags.mark_flag_as_required("run_dir")
  app.run(main)

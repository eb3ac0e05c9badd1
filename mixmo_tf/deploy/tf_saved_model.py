"""The serving SavedModel (TensorFlow): uint8 images in, ensemble and member probabilities out.

Its signature `serving_default` is `tf_serving.ServingModule.serve`: raw uint8 images [N, H, W, 3]
(`images`) -> {'probs': ensemble [N, K], 'member_probs': [N, M, K]}, normalisation inside (TF
Serving's REST API takes it as `{"instances": [image, ...]}`). It loads with TensorFlow alone: no
mixmo_tf, no Keras custom objects. `SavedModelLogits` reads one back as a prediction source.
"""

from __future__ import annotations

import shutil

import tensorflow as tf

from mixmo_tf.deploy.tf_serving import ServingModule, ensemble_probabilities
from mixmo_tf.run_folder.atomic import TMP_SUFFIX, replace_directory

__all__ = ["SavedModelLogits", "ensemble_probabilities", "export_saved_model", "save_staged"]


def save_staged(module: ServingModule, path: str) -> str:
  """Writes `module` as a SavedModel beside `path` (`<path>.tmp`, replaced if left over) and
  returns that folder; `replace_directory(staged, path)` then swaps it in."""
  tmp = path.rstrip("/") + TMP_SUFFIX
  shutil.rmtree(tmp, ignore_errors=True)
  tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
  return tmp


def export_saved_model(model, info, path: str, ensemble: str = "logits") -> str:
  """Writes the serving SavedModel of `model` at `path`, replacing a previous one atomically
  (written beside it, then swapped in: `run_folder.atomic.replace_directory`)."""
  replace_directory(save_staged(ServingModule(model, info, ensemble), path), path)
  return path


class SavedModelLogits:
  """A SavedModel as a prediction source: uint8 images -> member log-probabilities [N, M, K]
  (softmax(log p) = p, so every metric of member softmaxes or of their mean logit is unchanged up
  to a per-member constant shift)."""

  def __init__(self, path: str):
    self._serve = tf.saved_model.load(path).signatures["serving_default"]
    self.num_members = int(self._serve.structured_outputs["member_probs"].shape[1])

  def __call__(self, images):
    probs = self._serve(images=tf.convert_to_tensor(images, tf.uint8))["member_probs"]
    return tf.math.log(probs + 1e-30).numpy()

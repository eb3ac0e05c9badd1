"""The serving SavedModel (TensorFlow): uint8 images in, ensemble and member probabilities out.

The signature `serving_default` takes raw uint8 images [N, H, W, 3] (`images`), normalises them,
runs the folded network (one stem, the same function as M stems on the same image, Sec. 3.1) and
returns {'probs': ensemble [N, K], 'member_probs': [N, M, K]}. It loads with TensorFlow alone: no
mixmo_tf, no Keras custom objects. `saved_model_logits` reads one back as a prediction source.
"""

from __future__ import annotations

import shutil

import tensorflow as tf

from mixmo_tf.run_folder.atomic import TMP_SUFFIX, replace_directory


def ensemble_probabilities(logits, mode: str = "logits"):
  """[B, K] from member logits [B, M, K]: softmax of the mean logit ('logits', the paper's rule,
  docs/method.md §10.1) or mean softmax ('probs'); `evaluation.metrics.ensemble_probs` in TF."""
  if mode == "logits":
    return tf.nn.softmax(tf.reduce_mean(logits, axis=1), axis=-1)
  if mode == "probs":
    return tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=1)
  raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}.")


class _ServingModule(tf.Module):

  def __init__(self, model, mean, std, image_shape, ensemble):
    super().__init__()
    self.model = model.folded()  # One stem instead of M: the same function, exactly (Sec. 3.1).
    self._mean = tf.constant(mean, tf.float32)
    self._std = tf.constant(std, tf.float32)
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
    x = (tf.cast(images, tf.float32) / 255.0 - self._mean) / self._std
    logits = tf.cast(self.model([x], training=False), tf.float32)
    return {"probs": ensemble_probabilities(logits, self._ensemble),
            "member_probs": tf.nn.softmax(logits, axis=-1)}


def export_saved_model(model, info, path: str, ensemble: str = "logits") -> str:
  """Writes the serving SavedModel of `model` at `path`, replacing a previous one atomically
  (written beside it, then swapped in: `run_folder.atomic.replace_directory`)."""
  module = _ServingModule(model, info.mean, info.std, info.image_shape, ensemble)
  tmp = path.rstrip("/") + TMP_SUFFIX
  shutil.rmtree(tmp, ignore_errors=True)
  tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
  replace_directory(tmp, path)
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

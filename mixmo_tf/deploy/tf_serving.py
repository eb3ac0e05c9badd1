"""The serving function every deployment artifact holds (TensorFlow): uint8 images in, ensemble
and member probabilities out.

`ServingModule(network, info, ensemble).serve` takes raw uint8 images [N, H, W, 3] (`images`, any
N), normalises them with the dataset's mean and std, runs the folded network (one stem, the same
function as M stems on the same image, Sec. 3.1) and returns {'probs': ensemble [N, K],
'member_probs': [N, M, K]}. The SavedModel signs it as `serving_default`; the ONNX and LiteRT
converters translate the same function (`tf_onnx`, `tf_litert`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mixmo_tf.deploy.formats import INPUT

ENSEMBLE_MODES = ("logits", "probs")


def ensemble_probabilities(logits, mode: str = "logits"):
  """[B, K] from member logits [B, M, K]: softmax of the mean logit ('logits', the paper's rule,
  docs/method.md §10.1) or mean softmax ('probs'); `evaluation.metrics.ensemble_probs` in TF."""
  if mode == "logits":
    return tf.nn.softmax(tf.reduce_mean(logits, axis=1), axis=-1)
  if mode == "probs":
    return tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=1)
  raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}.")


class ServingModule(tf.Module):
  """The folded network of `network` behind the uint8 serving signature (see the module doc).

  The mean and std are NumPy values, so they become constants of the traced graph: a tensor
  created eagerly would be a captured input, which tf2onnx turns into an extra graph input.
  """

  def __init__(self, network, info, ensemble: str = "logits"):
    super().__init__()
    if ensemble not in ENSEMBLE_MODES:
      raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {ensemble!r}.")
    self.model = network.folded()  # One stem instead of M: the same function, exactly (Sec. 3.1).
    self._num_inputs = int(getattr(self.model, "num_inputs", network.num_members))
    self._mean = np.asarray(info.mean, np.float32)
    self._std = np.asarray(info.std, np.float32)
    self._ensemble = ensemble
    self.image_shape = tuple(int(d) for d in info.image_shape)
    spec = tf.TensorSpec([None] + list(self.image_shape), tf.uint8, name=INPUT)
    self.serve = tf.function(self._serve, input_signature=[spec])

  def _serve(self, images):
    # Signatures do not enforce static dimensions: check rank and size with a clear message (the
    # converters drop these asserts; ONNX Runtime and LiteRT check the declared shape themselves).
    expected = "uint8 images of shape [N, %d, %d, %d]" % self.image_shape
    shape = tf.shape(images)
    rank_ok = tf.debugging.assert_equal(tf.size(shape), 4, message=f"expected {expected}")
    with tf.control_dependencies([rank_ok]):  # before any op that needs rank 4
      size_ok = tf.debugging.assert_equal(
          tf.concat([shape, [0, 0, 0, 0]], 0)[1:4], tf.constant(self.image_shape, tf.int32),
          message=f"expected {expected}")
    with tf.control_dependencies([size_ok]):
      images = tf.identity(images)
    # The float32 operations of `evaluation.predict.normalise`, in the same order.
    x = (tf.cast(images, tf.float32) / 255.0 - self._mean) / self._std
    logits = tf.cast(self.model([x] * self._num_inputs, training=False), tf.float32)
    return {"probs": ensemble_probabilities(logits, self._ensemble),
            "member_probs": tf.nn.softmax(logits, axis=-1)}

"""Deployment of a trained run's folded network where practitioners serve models.

`formats` (the formats, their artifacts and requirements; no TensorFlow), `precision` (a network
rebuilt in float32; any backend), and on TensorFlow: `tf_serving` (the uint8 serving function all
artifacts hold), `tf_saved_model` (SavedModel, TF Serving), `tf_onnx` (ONNX through tf2onnx),
`tf_litert` (LiteRT, builtin ops) and `tf_export` (all of them, each checked in its runtime).
"""

import os


def is_saved_model(path: str) -> bool:
  """Whether `path` is a SavedModel folder."""
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb"))

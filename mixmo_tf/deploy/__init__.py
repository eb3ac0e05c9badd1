"""Deployment of a trained run's folded network: the serving SavedModel (`tf_saved_model`)."""

import os


def is_saved_model(path: str) -> bool:
  """Whether `path` is a SavedModel folder."""
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb"))

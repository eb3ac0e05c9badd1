"""TensorBoard scalars of a run: tf.summary where TensorFlow is importable, else nothing.

history.json carries the same per-epoch scalars on every backend; the summaries add the per-window
train scalars for TensorBoard. TensorFlow is imported only when the writer is created and found.
"""

from __future__ import annotations

from typing import Dict

from absl import logging


class NoSummaries:
  """The writer where TensorFlow is not importable."""

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    del step, values

  def flush(self) -> None:
    pass


class TensorBoardSummaries:
  """Scalars written with tf.summary into `path`."""

  def __init__(self, path: str):
    import tensorflow as tf
    self._tf = tf
    self._writer = tf.summary.create_file_writer(path)

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    with self._writer.as_default(step=int(step)):
      for name, value in values.items():
        self._tf.summary.scalar(name, float(value))

  def flush(self) -> None:
    self._writer.flush()


def summary_writer(path: str):
  """A TensorBoardSummaries writer for `path`, or NoSummaries (logged once) without TensorFlow."""
  from mixmo_tf import runtime
  if not runtime.tensorflow_importable():
    logging.info("TensorFlow is not importable: no TensorBoard summaries; history.json holds the "
                 "per-epoch scalars.")
    return NoSummaries()
  with runtime.quiet_tensorflow_import():
    return TensorBoardSummaries(path)

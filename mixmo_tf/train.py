"""`python -m mixmo_tf.train`: the one training driver for every method and every Keras backend.

The driver picks the loop that fits the backend (KERAS_BACKEND): on TensorFlow the custom loop
under a tf.distribute strategy (`mixmo_tf.custom_loop`, MirroredStrategy by default); on JAX and
PyTorch the Keras-native loop (`mixmo_tf.keras_loop`: `MixMoTrainer.fit` on NumPy data). Both
write the same run folder (`mixmo_tf.run_dir`) and resume from it when the command is rerun.
This module imports TensorFlow only when the TensorFlow loop runs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict

from mixmo_tf import runtime
from mixmo_tf.config import Config
from mixmo_tf.run_common import (HISTORY_KEYS, SUMMARY_KEYS, NonFiniteLossError,  # noqa: F401
                                 best_on_test, weights_fingerprint)
from mixmo_tf.run_lock import RunFolderError

def backend() -> str:
  import keras
  return keras.backend.backend()


def run(config: Config, strategy=None) -> Dict:
  """Library entry point: train `config` to the end with the backend's loop; the test results.

  `strategy` (a tf.distribute.Strategy) is for the TensorFlow loop only.
  """
  if backend() == "tensorflow":
    from mixmo_tf import custom_loop
    return custom_loop.run(config, strategy)
  if strategy is not None:
    raise ValueError(f"A tf.distribute strategy was given but KERAS_BACKEND={backend()}: "
                     "strategies belong to the TensorFlow loop.")
  from mixmo_tf import keras_loop
  return keras_loop.run(config)


def _expected_errors() -> tuple:
  """Errors that end a run with one line (the message says what to do), no traceback."""
  errors = (RunFolderError, NonFiniteLossError)
  if "tensorflow_datasets" in sys.modules or backend() == "tensorflow":
    from mixmo_tf.tfds_data import DatasetUnavailableError
    errors += (DatasetUnavailableError,)
  return errors


def main(argv):
  del argv
  from absl import flags, logging
  from mixmo_tf.config import config_from_flags
  if backend() == "tensorflow":  # The Keras-native loop logs its backend line itself.
    runtime.use_absl_handler_for_tensorflow()
    runtime.log_environment_once()
  config = config_from_flags(flags.FLAGS)
  config.validate()  # Early, before any strategy or data; validated again with the replicas.
  try:
    results = run(config)
  except _expected_errors() as error:
    logging.error("%s", error)  # One line: no traceback from deep inside the framework.
    sys.exit(1)
  logging.info("Final test metrics: %s", json.dumps(
      {k: v for k, v in results.items() if isinstance(v, (int, float))}, sort_keys=True))
  if config.strategy == "multi_worker" and backend() == "tensorflow":
    # MultiWorkerMirroredStrategy processes linger for seconds at exit (BUILD_NOTES.md); all
    # files are written and closed by now.
    logging.flush()
    os._exit(0)


if __name__ == "__main__":
  from absl import app
  from mixmo_tf.config import define_flags
  define_flags()
  app.run(main)

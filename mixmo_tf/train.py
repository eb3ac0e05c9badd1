"""`python -m mixmo_tf.train`: the one training command, for every method and every Keras backend.

Flags build a `Config` (`mixmo_tf.config`); `mixmo_tf.training.run` trains it with the engine that
--engine and KERAS_BACKEND select (the tf.distribute custom loop on TensorFlow by default, the
Keras engine elsewhere), in a run folder that the same command resumes.
"""

from __future__ import annotations

import json
import os
import sys

from absl import logging

from mixmo_tf import commands, config as config_lib, runtime


def define_flags(flag_values) -> None:
  """One flag per Config field, on `flag_values` (absl's FLAGS when run as a module)."""
  config_lib.define_flags(flag_values)


def main(argv, flag_values) -> None:
  """Trains the configuration the flags describe to its end; logs the final test metrics."""
  del argv
  import keras

  from mixmo_tf import training
  if keras.backend.backend() == "tensorflow":
    runtime.use_absl_handler_for_tensorflow()
    runtime.log_environment_once()
  config = config_lib.config_from_flags(flag_values).validate()
  results = training.run(config)
  logging.info("Final test metrics: %s", json.dumps(
      {k: v for k, v in results.items() if isinstance(v, (int, float))}, sort_keys=True))
  if config.strategy == "multi_worker":
    # MultiWorkerMirroredStrategy processes linger for seconds at exit (BUILD_NOTES.md); all
    # files are written and closed by now.
    logging.flush()
    os._exit(0)


if __name__ == "__main__":
  commands.run(sys.modules[__name__])

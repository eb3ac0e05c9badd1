"""Training: the run loop (`loop`, the policy of a run, written once), its two engines
(`tf_engine`: tf.distribute, TensorFlow; `keras_engine`: `MixMoTrainer.fit`, any backend), the
trainer (`trainer.MixMoTrainer`) and the choice between them (`engines`).

`run(config)` trains a configuration to its end with the engine that --engine and the backend
select, and returns the test results (what `python -m mixmo_tf.train` does).
"""

from __future__ import annotations

from typing import Dict


def run(config, strategy=None) -> Dict:
  """Trains `config` to the end (resuming its folder), writes every artifact, returns results.

  `strategy`: a tf.distribute.Strategy for the tf.distribute engine (default: the one named by
  --strategy).
  """
  import keras

  from mixmo_tf.training import engines
  backend = keras.backend.backend()
  config = engines.resolve(config.validate(), backend)
  if strategy is not None and config.engine != "custom":
    raise ValueError(f"A tf.distribute strategy was given but --engine={config.engine}: "
                     "strategies belong to the tf.distribute engine (KERAS_BACKEND=tensorflow).")
  if config.engine == "custom":
    from mixmo_tf.training import tf_engine
    return tf_engine.run(config, strategy)
  from mixmo_tf.training import keras_engine
  return keras_engine.run(config)

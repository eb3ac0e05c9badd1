"""The Keras engine: `MixMoTrainer.fit` on any Keras backend (docs/method.md §6), one span at a time.

The default off TensorFlow (JAX, PyTorch), and available there too (--engine=keras). Each span the
run loop asks for is one `fit` epoch over `TrainBatches` of the run's data order, with a callback
that reports every step's loss and accuracy; checkpoints are `ckpt-N.weights.npz` (network, step
counter, optimizer: `run_folder.checkpoints.ArrayCheckpointStore`). On JAX, --strategy=data_parallel
(the default there) trains on every local device through keras.distribution.DataParallel with the
same global batch; the member batch is drawn once and sharded (`trainer.shard_batch`).
"""

from __future__ import annotations

from typing import Dict

import keras
from absl import logging

from mixmo_tf.config import Config
from mixmo_tf.data.datasets import InMemory
from mixmo_tf.run_folder import RunFolder
from mixmo_tf.training import loop
from mixmo_tf.training.engines import accelerator_present, backend_line
from mixmo_tf.training.trainer import MixMoTrainer, TrainBatches, trainer_from_config


class _StepReports(keras.callbacks.Callback):
  """Reports each step's (loss, accuracy) to the run loop. Keras logs running means over the fit
  epoch (the span); step n's own value is n m_n - (n - 1) m_(n-1)."""

  def __init__(self, first_step: int, report):
    super().__init__()
    self.first_step, self.report = first_step, report
    self._sums = (0.0, 0.0)

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    n = batch + 1
    sums = (n * float(logs.get("loss", float("nan"))), n * float(logs.get("accuracy", 0.0)))
    self.report(self.first_step + batch, sums[0] - self._sums[0], sums[1] - self._sums[1])
    self._sums = sums


class KerasEngine:
  """A run's `MixMoTrainer` and its checkpoints (see the module doc)."""

  def __init__(self, config: Config, info, folder: RunFolder):
    self.config = config
    self.trainer: MixMoTrainer = trainer_from_config(config, info)
    self.network, self.info = self.trainer.network, self.trainer.info
    self.steps_per_epoch = self.trainer.steps_per_epoch
    self.learning_rate = self.trainer.learning_rate_schedule
    self.trainer.optimizer.build(self.network.trainable_variables)
    self.checkpoints = folder.array_checkpoints(self._state, config.keep_checkpoints)

  def _state(self) -> Dict[str, list]:
    """Every variable a resume needs: weights and BN statistics, step counter, optimizer."""
    return {"network": list(self.network.variables), "trainer": [self.trainer.step_counter],
            "optimizer": list(self.trainer.optimizer.variables)}

  @property
  def global_step(self) -> int:
    return self.trainer.global_step

  def restore(self) -> int:
    self.checkpoints.restore()
    return self.global_step

  def save(self, step: int) -> str:
    return self.checkpoints.save(step)

  def train(self, batches, epoch: int, first_batch: int, num_steps: int, report) -> None:
    """Trains batches first_batch .. first_batch + num_steps - 1 of the 0-based `epoch`."""
    step = epoch * self.steps_per_epoch + first_batch
    if step != self.global_step:
      raise RuntimeError(f"The engine is at step {self.global_step}, asked to train from {step}.")
    callbacks = [_StepReports(step, report)]
    if not hasattr(batches, "batch"):  # A stream (TFDS): read in order.
      stream = (((pair, partners),) if partners else (pair,)
                for pair, partners in batches.span(epoch, first_batch, num_steps))
      self.trainer.fit(stream, epochs=1, steps_per_epoch=num_steps, callbacks=callbacks,
                       verbose=0, shuffle=False)
      return
    # Files decoded per batch: Keras' worker threads read the next batches during the step.
    workers = 1 if isinstance(batches.examples, InMemory) else 2
    span = TrainBatches(batches, epoch, first_batch, num_steps, workers=workers,
                        max_queue_size=4)
    self.trainer.fit(span, epochs=1, callbacks=callbacks, verbose=0)


def _use_local_devices(config: Config) -> int:
  """Sets keras.distribution.DataParallel over every local device for --strategy=data_parallel
  when there are several (JAX); returns the number of replicas."""
  if config.strategy != "data_parallel":
    return 1
  devices = keras.distribution.list_devices()
  if len(devices) > 1:
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    logging.info("Data parallel over %d devices: %s.", len(devices), ", ".join(devices))
  return len(devices)


def run(config: Config) -> Dict:
  """Trains `config` with this engine on the current Keras backend."""
  backend = keras.backend.backend()
  logging.info("%s", backend_line(backend))
  config.validate(1)  # Before the distribution is set: bad flags touch nothing.
  replicas = _use_local_devices(config)
  try:
    config, folder, data, ood_sets = loop.start_run(config, backend, replicas,
                                                    accelerator_present(backend))
  except BaseException:
    keras.distribution.set_distribution(None)
    raise
  try:
    engine = KerasEngine(config, data.info, folder)
  except BaseException:
    folder.abandon()
    raise
  try:
    return loop.RunLoop(config, engine, data, folder, ood_sets).run()
  finally:
    if replicas > 1:
      keras.distribution.set_distribution(None)

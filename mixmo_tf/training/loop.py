"""The run loop: the policy of a training run, written once for both engines.

`RunLoop.run` owns resume (the newest intact checkpoint's step), step and epoch accounting,
--max_steps, the progress line and the NaN stop (`progress`), history before checkpoint, the
evaluation and checkpoint cadence, and the end of the run: final metrics, OOD and corruption
results, the models, then results.json, the completion record, last. An engine
(`training.engines`) only trains a span of steps, saves and restores its state and hands over its
network; the tf.distribute engine and the Keras engine write the same history.json and
results.json. `training.run(config)` is the library entry point (`python -m mixmo_tf.train`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Dict, List, Optional

import keras
import numpy as np
from absl import logging

from mixmo_tf.config import Config
from mixmo_tf.core import schedules
from mixmo_tf.data.batches import training_batches
from mixmo_tf.data.datasets import Dataset
from mixmo_tf.evaluation import metrics, ood
from mixmo_tf.evaluation.corruptions import corruption_results
from mixmo_tf.evaluation.predict import Predictor, predict_batches
from mixmo_tf.run_folder import RunFolder
from mixmo_tf.run_folder.folder import SAVED_MODEL, log_resumed
from mixmo_tf.training.progress import Progress

SUMMARY_KEYS = ("top1", "top5", "nll", "ece", "top1_members_mean")
HISTORY_KEYS = ("top1", "top5", "nll", "nll_c", "ece", "top1_members_mean")


def weights_fingerprint(model) -> str:
  """SHA-256 of the trainable weights, which every replica and worker must share (BN moving
  statistics are per replica, as batch statistics are, and are left out)."""
  digest = hashlib.sha256()
  for weight in model.trainable_weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value),
                                       np.float32).tobytes())
  return digest.hexdigest()[:16]


def best_on_test(history: List[Dict]) -> Optional[Dict]:
  """The evaluated epoch with the best test Top-1 (ties: the later one) and its metrics, as the
  official code selects its checkpoint: selected on the test set, so not a clean estimate
  (docs/method.md §10.5, §17). None if no epoch was evaluated."""
  best = None
  for entry in history:
    if "top1" in entry and (best is None or entry["top1"] >= best["top1"]):
      best = entry
  if best is None:
    return None
  return dict({k: best[k] for k in HISTORY_KEYS if k in best}, epoch=best["epoch"],
              step=best["step"])


def run_summary(history: List[Dict], global_step: int, steps_per_epoch: int, model) -> Dict:
  """The results.json entries beyond the test metrics: time, throughput, steps, per-epoch Top-1,
  best-on-test and the weights fingerprint (logged)."""
  train_time = sum(h.get("epoch_seconds", 0.0) for h in history)
  train_images = sum(h.get("epoch_images", 0) for h in history)
  summary = dict(train_seconds=train_time,
                 train_images_per_second=train_images / train_time if train_time else None,
                 global_step=global_step, epochs_completed=global_step / steps_per_epoch,
                 test_top1_per_epoch=[(h["epoch"], h["top1"]) for h in history if "top1" in h],
                 best_on_test=best_on_test(history), weights_fingerprint=weights_fingerprint(model))
  logging.info("Weights fingerprint %s at step %d.", summary["weights_fingerprint"], global_step)
  return summary


class RunLoop:
  """Trains one configuration to its end with `engine`, in `folder` (see the module doc)."""

  def __init__(self, config: Config, engine, data: Dataset, folder: RunFolder,
               ood_sets: Optional[Dict] = None):
    self.config, self.engine, self.data, self.folder = config, engine, data, folder
    self.info = engine.info  # The dataset as the network reads it (`models.adapt_info`).
    self.ood_sets = ood_sets or {}
    self.steps_per_epoch = engine.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.epochs
    if config.max_steps:
      self.total_steps = min(self.total_steps, config.max_steps)
    partners = config.batch_size * config.num_members if config.msda != "none" else 0
    self.batches = training_batches(data.train, config.unique_batch_size, config.seed, partners)
    self.summaries = folder.summary_writer()
    self.progress = Progress(
        config.log_every_steps, self.total_steps, config.batch_size, engine.learning_rate,
        lambda epoch: schedules.patch_probability(epoch, config.epochs, config.patch_probability),
        self.summaries, folder.latest_checkpoint)
    self._predictor = Predictor.from_network(engine.network, self.info)

  def run(self) -> Dict:
    """Trains to the end (resuming if a checkpoint exists), evaluates, writes every artifact;
    releases the run folder's lock however it ends."""
    try:
      return self._run()
    finally:
      self.folder.release()

  def _run(self) -> Dict:
    c = self.config
    self.folder.write_run_files(c, self.info, keras.backend.backend())
    step = self.engine.restore()
    log_resumed(self.folder.latest_checkpoint() if step else None, step)
    history = self.folder.load_history(step)
    if step < self.total_steps:
      self.folder.retract_results()  # Not complete again until this run's end.
    last_logits = None
    epoch = step // self.steps_per_epoch
    while step < self.total_steps:
      t0, start = time.time(), step
      end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
      self.progress.start_epoch()
      self.engine.train(self.batches, epoch, step - epoch * self.steps_per_epoch, end - step,
                        lambda s, loss, acc, e=epoch: self.progress.step(s, e, loss, acc))
      step = self.engine.global_step
      entry = {"epoch": epoch + 1, "step": step, "epoch_seconds": time.time() - t0,
               "epoch_images": (step - start) * c.batch_size, **self.progress.epoch_means(),
               "learning_rate": float(self.engine.learning_rate(step - 1)),
               "patch_probability": float(schedules.patch_probability(
                   epoch + 1, c.epochs, c.patch_probability))}
      last = step >= self.total_steps
      if (epoch + 1) % c.eval_frequency == 0 or last:
        last_logits = self._predict_test()
        entry.update(self._log_evaluation(epoch, step, *last_logits))
      history.append(entry)
      # History first: a resume keeps the entries up to its checkpoint's step, so a kill between
      # the two writes loses nothing (the other order lost the epoch's entry).
      self.folder.save_history(history)
      if (epoch + 1) % c.checkpoint_frequency == 0 or last:
        self.engine.save(step)
      epoch += 1
    return self._finish(history, last_logits)

  def _predict_test(self):
    """(member logits [N, M, K], labels [N]) of the whole test set (no example dropped)."""
    return predict_batches(self._predictor, self.data.test, name="test set")

  def _log_evaluation(self, epoch: int, step: int, logits, labels) -> Dict[str, float]:
    results = metrics.evaluate_logits(logits, labels, self.config.ensemble)
    logging.info("epoch %d: test top1 %.4f, top5 %.4f, nll %.4f, members top1 %.4f", epoch + 1,
                 results["top1"], results["top5"], results["nll"], results["top1_members_mean"])
    self.summaries.scalars(step, {f"test/{k}": results[k] for k in SUMMARY_KEYS})
    return {k: results[k] for k in HISTORY_KEYS if k in results}

  def _finish(self, history: List[Dict], test) -> Dict:
    """Final metrics (with OOD and corruptions when asked), the models, then results.json."""
    c, network = self.config, self.engine.network
    if test is None:  # Resumed at the end: nothing was trained in this process.
      test = self._predict_test()
    test_logits, labels = test
    results = metrics.evaluate_logits(test_logits, labels, c.ensemble)
    if self.ood_sets:  # docs/method.md §17: each set scored against the test set.
      results["ood"] = {name: ood.evaluate_ood(test_logits, predict_batches(
          self._predictor, examples, name=f"OOD set {name!r}")[0], c.ensemble)
                        for name, examples in self.ood_sets.items()}
    if c.corruptions != "none":
      results["corruptions"] = corruption_results(self._predictor, c.corruptions,
                                                  c.corruptions_dir, c.ensemble)
    results.update(run_summary(history, self.engine.global_step, self.steps_per_epoch, network))
    results.update(backend=keras.backend.backend(), engine=c.engine)
    self.folder.write_models(network, self.info, c.ensemble,
                             saved_model=SAVED_MODEL in self.folder.final_artifacts())
    self.folder.write_results(results)  # The completion record: after every other artifact.
    self.summaries.flush()
    return results


def start_run(config: Config, backend: str, num_replicas: int = 1, accelerator: bool = False,
              chief: bool = True, worker: int = 0):
  """Start-up of every run, whatever its engine: validates `config` for `num_replicas`, settles
  the precision, prepares the folder (lock, resume check), then seeds, sets the dtype policy and
  reads the data and the OOD sets, so that a bad set fails before any training.

  Returns (config, folder, data, ood sets); the folder's lock is released if anything fails.
  """
  from mixmo_tf.core import seeds
  from mixmo_tf.data import datasets, ood_sets
  from mixmo_tf.training.engines import with_precision
  config.validate(num_replicas)
  config = with_precision(config, backend, accelerator)
  folder = RunFolder.prepare(config, chief, worker)
  try:
    if config.corruptions == "cifar10_c" and not _released(config.corruptions_dir):
      from mixmo_tf.data import corrupted, tfds  # Fail now, not after training.
      tfds.prepared_builder(f"cifar10_corrupted/{corrupted.CIFAR10_C_CORRUPTIONS[0]}_1",
                            config.corruptions_dir or None)
    seeds.initialise(config.seed)
    keras.mixed_precision.set_dtype_policy(config.precision)
    data = datasets.load(config)
    sets = ood_sets.ood_sets(config.ood, ood_sets.tfds_data_dir(config), data.info.image_shape)
    return config, folder, data, sets
  except BaseException:
    folder.abandon()
    raise


def _released(directory: str) -> bool:
  from mixmo_tf.data.corrupted import is_released_folder
  return is_released_folder(directory)

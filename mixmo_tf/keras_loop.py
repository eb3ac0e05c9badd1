"""The Keras-native training loop: `python -m mixmo_tf.train` on JAX and PyTorch (docs/method.md §6).

`MixMoTrainer.fit` on the NumPy arrays of `mixmo_tf.arrays`, with one callback (`RunFolderCallback`)
that does at each epoch's end what the TensorFlow loop does: the test evaluation every
--eval_frequency epochs, a verified checkpoint (`checkpoints/ckpt-N.weights.npz` + `.sha256`) every
--checkpoint_frequency epochs, `history.json`. At the end: `results.json`, `model.keras` and
`model_folded.keras`, in the same run folder as the TensorFlow loop's (`mixmo_tf.run_dir`, with its
lock). Rerunning the command resumes from the newest intact checkpoint. No TensorFlow is imported
unless it is installed, and then only for TensorBoard summaries; `history.json` carries the same
scalars either way. Works on the TensorFlow backend too (tests compare it with the custom loop).
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

import keras
import numpy as np
from absl import logging

from mixmo_tf import arrays as arrays_lib
from mixmo_tf import metrics, run_common, runtime, schedules
from mixmo_tf.config import Config
from mixmo_tf.keras_trainer import MixMoTrainer, train_arrays_dataset, trainer_from_config
from mixmo_tf.run_dir import RunDir, log_resumed

EVAL_BATCH_SIZE = 500


def unsupported(config: Config) -> List[str]:
  """The flags this loop cannot honour (TensorFlow-only features), each with the reason."""
  problems = []
  if config.strategy != "mirrored":
    problems.append(f"--strategy={config.strategy} is a tf.distribute strategy")
  if config.augmix:
    problems.append("--augmix is built on tf.image")
  if config.corruptions != "none":
    problems.append(f"--corruptions={config.corruptions} reads TFDS / TensorFlow files")
  if config.ood:
    problems.append("--ood reads its sets through tf.data")
  if config.dataset not in arrays_lib.ARRAY_DATASETS:
    problems.append(f"--dataset={config.dataset} reads TensorFlow Datasets (use --dataset=folder "
                    f"--data_dir=<class folders>)")
  return problems


def check_supported(config: Config, backend: str) -> None:
  """ValueError naming the backend and every TensorFlow-only flag asked for."""
  problems = unsupported(config)
  if problems:
    raise ValueError(f"KERAS_BACKEND={backend} trains with the Keras-native loop, which does not "
                     f"support: {'; '.join(problems)}. Run with KERAS_BACKEND=tensorflow for "
                     f"these.")


def accelerator_present(backend: str) -> bool:
  """Whether the backend computes on a GPU/TPU (bf16 by --precision=auto)."""
  if backend == "jax":
    import jax
    return jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")
  if backend == "torch":
    import torch
    return bool(torch.cuda.is_available())
  if backend == "tensorflow":
    import tensorflow as tf
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
  return False


def backend_line(backend: str) -> str:
  """One log line: the backend, its version and devices, and the CPU."""
  version, devices = "", ""
  if backend == "jax":
    import jax
    version, devices = jax.__version__, ", ".join(str(d) for d in jax.devices())
  elif backend == "torch":
    import torch
    version = torch.__version__
    devices = "cuda" if torch.cuda.is_available() else "cpu"
  return (f"Keras {keras.__version__} on {backend} {version} ({devices}); CPU: "
          f"{runtime.cpu_model()}.")


def member_logits(network, images: np.ndarray, info, batch_size: int = EVAL_BATCH_SIZE):
  """Member logits [N, M, K] (float32) of uint8 images, the same image in every stem (§10.1)."""
  mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
  x = (images.astype(np.float32) / 255.0 - mean) / std
  logits = network.predict([x] * network.num_members, batch_size=batch_size, verbose=0)
  return np.asarray(logits, np.float32)


def test_results(network, data, ensemble: str) -> Dict:
  """Test metrics of the ensemble and of each member (docs/method.md §10)."""
  return metrics.evaluate_logits(member_logits(network, data.test_images, data.info),
                                 data.test_labels, ensemble)


class RunFolderCallback(keras.callbacks.Callback):
  """Progress lines and the NaN stop every --log_every_steps steps; at each epoch's end the
  history entry, evaluation and checkpoint, as the TensorFlow loop writes them."""

  def __init__(self, run: "KerasRun", step: int, history: List[Dict]):
    super().__init__()
    self.run, self.step, self.history = run, step, history
    self._t0 = self._window_t0 = time.time()
    self._epoch_start = self._window_start = step

  def on_epoch_begin(self, epoch, logs=None):
    self._t0 = self._window_t0 = time.time()
    self._epoch_start = self._window_start = self.step

  def on_train_batch_end(self, batch, logs=None):
    self.step += 1
    run = self.run
    if self.step % run.config.log_every_steps == 0 or self.step >= run.total_steps:
      self._log_window(logs or {})
    if self.step >= run.total_steps:
      self.model.stop_training = True

  def _log_window(self, logs) -> None:
    run, c = self.run, self.run.config
    loss, acc = float(logs.get("loss", np.nan)), float(logs.get("accuracy", np.nan))
    run_common.check_finite([loss], [self.step - 1], self.step // run.steps_per_epoch,
                            run.folder.latest_checkpoint())
    seconds = max(time.time() - self._window_t0, 1e-9)
    rate = (self.step - self._window_start) / seconds
    eta = (run.total_steps - self.step) / max(rate, 1e-9)
    logging.info("step %d/%d epoch %d: loss %.4f (epoch mean), train acc %.3f, lr %.5f, %.2f "
                 "steps/s, %.0f img/s, ETA %s", self.step, run.total_steps,
                 (self.step - 1) // run.steps_per_epoch + 1, loss, acc,
                 float(run.schedule(self.step - 1)), rate, rate * c.batch_size,
                 time.strftime("%H:%M:%S", time.gmtime(eta)))
    self._window_t0, self._window_start = time.time(), self.step

  def on_epoch_end(self, epoch, logs=None):
    run, c, logs = self.run, self.run.config, logs or {}
    loss = float(logs.get("loss", np.nan))
    run_common.check_finite([loss], [self.step - 1], epoch, run.folder.latest_checkpoint())
    entry = {"epoch": epoch + 1, "step": self.step, "epoch_seconds": time.time() - self._t0,
             "epoch_images": (self.step - self._epoch_start) * c.batch_size,
             "train_loss": loss, "train_accuracy": float(logs.get("accuracy", np.nan)),
             "learning_rate": float(run.schedule(self.step - 1)),
             "patch_probability": float(schedules.patch_probability(
                 epoch + 1, c.epochs, c.patch_probability))}
    last = self.step >= run.total_steps
    if (epoch + 1) % c.eval_frequency == 0 or last:
      results = test_results(run.trainer.network, run.data, c.ensemble)
      logging.info("epoch %d: test top1 %.4f, top5 %.4f, nll %.4f, members top1 %.4f",
                   epoch + 1, results["top1"], results["top5"], results["nll"],
                   results["top1_members_mean"])
      entry.update({k: results[k] for k in run_common.HISTORY_KEYS if k in results})
      logs.update({f"test_{k}": results[k] for k in run_common.SUMMARY_KEYS})  # TensorBoard.
    self.history.append(entry)
    run.folder.save_history(self.history)  # Before the checkpoint, as in the TensorFlow loop.
    if (epoch + 1) % c.checkpoint_frequency == 0 or last:
      run.save_checkpoint(self.step)


class KerasRun:
  """One run of the Keras-native loop: config, data, trainer, run folder (see the module doc)."""

  def __init__(self, config: Config, data: arrays_lib.Arrays, folder: RunDir):
    self.config, self.data, self.folder = config, data, folder
    self.trainer: MixMoTrainer = trainer_from_config(config, data.info)
    self.steps_per_epoch = self.trainer.steps_per_epoch
    self.total_steps = self.steps_per_epoch * config.epochs
    if config.max_steps:
      self.total_steps = min(self.total_steps, config.max_steps)
    self.schedule = self.trainer.learning_rate_schedule
    self.trainer.optimizer.build(self.trainer.network.trainable_variables)

  def state(self) -> Dict[str, list]:
    """Every variable a resume needs: weights and BN statistics, step counter, optimizer."""
    return {"network": list(self.trainer.network.variables),
            "trainer": [self.trainer.step_counter],
            "optimizer": list(self.trainer.optimizer.variables)}

  def save_checkpoint(self, step: int) -> str:
    return self.folder.save_arrays(self.state(), step, self.config.keep_checkpoints)

  def restore(self) -> int:
    """Restores the newest intact checkpoint, if any; returns the global step."""
    step = 0
    path = self.folder.restore_arrays(self.state())
    if path:
      step = self.trainer.global_step
      log_resumed(path, step)
    return step

  def fit(self) -> Dict:
    """Trains to the end (resuming), evaluates, writes every artifact; releases the lock."""
    try:
      return self._fit()
    finally:
      self.folder.release()

  def _fit(self) -> Dict:
    c = self.config
    self.folder.write_run_files(c, self.data.info)
    step = self.restore()
    history = self.folder.load_history(step)
    if step < self.total_steps:
      if step % self.steps_per_epoch:
        raise ValueError(
            f"The checkpoint at step {step} is inside epoch {step // self.steps_per_epoch + 1} "
            f"(a run stopped by --max_steps); the Keras-native loop resumes at epoch starts "
            f"only. Rerun with --max_steps={step}, or resume on the TensorFlow backend.")
      epoch = step // self.steps_per_epoch
      msda = c.msda != "none"
      batches = train_arrays_dataset(
          self.data.train_images, self.data.train_labels, c.unique_batch_size, c.seed,
          epoch=epoch, partner_batch_size=c.batch_size * c.num_members if msda else 0)
      callbacks = [RunFolderCallback(self, step, history)] + self._tensorboard()
      epochs = -(-self.total_steps // self.steps_per_epoch)
      self.trainer.fit(batches, epochs=epochs, initial_epoch=epoch, callbacks=callbacks,
                       verbose=0)
    return self._finish(history)

  def _tensorboard(self) -> list:
    """keras.callbacks.TensorBoard where TensorFlow is installed (epoch scalars); else none."""
    try:
      with runtime.quiet_tensorflow_import():  # Only to know whether summaries can be written.
        import tensorflow  # noqa: F401
    except ImportError:
      logging.info("TensorFlow is not installed: no TensorBoard summaries; history.json holds "
                   "the per-epoch scalars.")
      return []
    return [keras.callbacks.TensorBoard(self.folder.file("tensorboard"), write_graph=False)]

  def _finish(self, history: List[Dict]) -> Dict:
    c, network = self.config, self.trainer.network
    results = test_results(network, self.data, c.ensemble)
    results.update(run_common.run_summary(history, self.trainer.global_step,
                                          self.steps_per_epoch, network))
    results["backend"] = keras.backend.backend()
    self.folder.write_results(results)
    self.folder.write_models(network, self.data.info, c.ensemble)
    return results


def build(config: Config) -> KerasRun:
  """Validates `config` for this backend (before any data is read), prepares the run folder,
  seeds, sets the dtype policy and loads the data."""
  backend = keras.backend.backend()
  config.validate(1)
  check_supported(config, backend)
  logging.info("%s", backend_line(backend))
  config = run_common.resolve_precision(config, backend, accelerator_present(backend))
  folder = RunDir.prepare(config)
  try:
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_dtype_policy(config.precision)
    data = arrays_lib.load_arrays(config, backend)
    return KerasRun(config, data, folder)
  except BaseException:
    folder.release()
    raise


def run(config: Config) -> Dict:
  """Library entry point: train `config` with the Keras-native loop; the test results."""
  return build(config).fit()

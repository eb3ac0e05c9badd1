"""Progress of a run, for both engines: the progress line, train summaries, the NaN stop, and the
epoch's train loss and accuracy for history.json.

An engine reports every step's (loss, accuracy); values may stay lazy tensors until the window
closes every --log_every_steps steps, so the tf.distribute engine does not wait on each step.
"""

from __future__ import annotations

import time
from typing import List, Optional

import numpy as np
from absl import logging


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss becomes NaN or infinite."""


def check_finite(losses, steps, epoch: int, latest_checkpoint: Optional[str]) -> None:
  """Raises NonFiniteLossError naming the first step whose loss is NaN / inf (1-based step and
  epoch) and the last good checkpoint, which is kept intact."""
  losses = np.asarray(losses, np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise NonFiniteLossError(
        f"Loss became {losses[bad[0]]} at step {steps[bad[0]] + 1} (epoch {epoch + 1}); "
        f"training stopped. The last good checkpoint is kept intact: {latest_checkpoint}.")


class Progress:
  """Collects the steps an engine reports; every `log_every_steps` steps (and at the end of each
  span) logs one line, writes train summaries and stops the run on a non-finite loss.

  Args:
    log_every_steps, total_steps, batch_size: from the run.
    learning_rate: step -> learning rate (for the line).
    patch_probability: 1-based epoch -> p(e).
    summaries: a `run_folder.summaries` writer.
    latest_checkpoint: () -> the last good checkpoint (named by the NaN stop).
  """

  def __init__(self, log_every_steps: int, total_steps: int, batch_size: int, learning_rate,
               patch_probability, summaries, latest_checkpoint):
    self.log_every_steps, self.total_steps = log_every_steps, total_steps
    self.batch_size = batch_size
    self.learning_rate, self.patch_probability = learning_rate, patch_probability
    self.summaries, self.latest_checkpoint = summaries, latest_checkpoint
    self._window: List = []
    self._window_start = time.time()
    self._epoch_losses: List[float] = []
    self._epoch_accuracies: List[float] = []
    self.losses: List[float] = []  # Every step's loss since the process started.

  def start_epoch(self) -> None:
    self._epoch_losses, self._epoch_accuracies = [], []
    self._window, self._window_start = [], time.time()

  def step(self, step: int, epoch: int, loss, accuracy) -> None:
    """Step `step` (0-based) of the 0-based `epoch` trained with this (loss, accuracy)."""
    self._window.append((step, epoch, loss, accuracy))
    if (step + 1) % self.log_every_steps == 0 or step + 1 >= self.total_steps:
      self.flush()

  def flush(self) -> None:
    """Closes the window: NaN check, progress line, train summaries."""
    if not self._window:
      return
    steps = [s for s, _, _, _ in self._window]
    epoch = self._window[-1][1]
    losses = [float(l) for _, _, l, _ in self._window]
    accuracies = [float(a) for _, _, _, a in self._window]
    seconds = max(time.time() - self._window_start, 1e-9)
    self._window, self._window_start = [], time.time()
    self.losses += losses
    self._epoch_losses += losses
    self._epoch_accuracies += accuracies
    check_finite(losses, steps, epoch, self.latest_checkpoint())
    step = steps[-1] + 1
    loss, accuracy = float(np.mean(losses)), float(np.mean(accuracies))
    rate = len(steps) / seconds
    eta = (self.total_steps - step) / max(rate, 1e-9)
    lr = float(self.learning_rate(step - 1))
    logging.info("step %d/%d epoch %d: loss %.4f, train acc %.3f, lr %.5f, %.2f steps/s, %.0f "
                 "img/s, ETA %s", step, self.total_steps, epoch + 1, loss, accuracy, lr, rate,
                 rate * self.batch_size, time.strftime("%H:%M:%S", time.gmtime(eta)))
    self.summaries.scalars(step, {
        "train/loss": loss, "train/accuracy": accuracy, "train/learning_rate": lr,
        "train/patch_probability": float(self.patch_probability(epoch + 1)),
        "train/images_per_second": rate * self.batch_size})

  def epoch_means(self) -> dict:
    """The train loss and accuracy means over the epoch's steps trained in this process."""
    self.flush()
    mean = lambda v: float(np.mean(v)) if v else float("nan")
    return {"train_loss": mean(self._epoch_losses),
            "train_accuracy": mean(self._epoch_accuracies)}

"""What both training loops share (TensorFlow-free): precision resolution, the NaN stop, the
best-on-test selection, the weights fingerprint and the final results.json entries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional

import numpy as np
from absl import logging

from mixmo_tf import runtime
from mixmo_tf.config import Config

SUMMARY_KEYS = ("top1", "top5", "nll", "ece", "top1_members_mean")
HISTORY_KEYS = ("top1", "top5", "nll", "nll_c", "ece", "top1_members_mean")


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss becomes NaN or infinite."""


def check_finite(losses, steps, epoch: int, latest_checkpoint) -> None:
  """Raises NonFiniteLossError naming the first step whose loss is NaN / inf (1-based step and
  epoch) and the last good checkpoint, which is kept intact."""
  losses = np.asarray(losses, np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise NonFiniteLossError(
        f"Loss became {losses[bad[0]]} at step {steps[bad[0]] + 1} (epoch {epoch + 1}); "
        f"training stopped. The last good checkpoint is kept intact: {latest_checkpoint}.")


def weights_fingerprint(model) -> str:
  """SHA-256 of the trainable weights, which every replica and worker must share (BN moving
  statistics are per replica, as batch statistics are, and are left out)."""
  import keras
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


def resolve_precision(config: Config, backend: str, accelerator: bool) -> Config:
  """Config with --precision=auto resolved for this machine (runtime.resolve_precision), or the
  precision of the run being resumed, so a resume never switches it silently; logged."""
  saved = os.path.join(config.output_dir, "config.json")
  if config.precision == "auto" and not config.overwrite and os.path.exists(saved):
    with open(saved) as f:
      precision, reason = json.load(f).get("precision", "float32"), "kept from the resumed run"
  else:
    precision = runtime.resolve_precision(config.precision, backend, accelerator)
    reason = runtime.precision_reason(config.precision, backend, accelerator)
  logging.info("Precision %s (%s).", precision, reason)
  return dataclasses.replace(config, precision=precision)


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

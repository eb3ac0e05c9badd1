"""Robustness to common corruptions: CIFAR-10-C (TFDS) and CIFAR-100-C (released .npy files).

docs/method.md §10.4: 19 corruptions x 5 severities, all pooled; Top-1, Top-5 and **uncalibrated** NLL of
the ensemble (no temperature scaling with corruptions), with the same normalisation as the clean
test set (the predictor does it). A per corruption / severity breakdown is returned as well.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Iterator, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mixmo_tf import metrics
from mixmo_tf.predict import predict_dataset

SEVERITIES = (1, 2, 3, 4, 5)

# TFDS `cifar10_corrupted` config names are f"{corruption}_{severity}".
CIFAR10_C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic", "fog", "frost", "frosted_glass_blur",
    "gaussian_blur", "gaussian_noise", "impulse_noise", "jpeg_compression", "motion_blur",
    "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur")

# File stems of the released CIFAR-100-C archive (Hendrycks & Dietterich): `<stem>.npy`.
CIFAR100_C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost", "gaussian_blur",
    "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression", "motion_blur", "pixelate",
    "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur")

CorruptedDataset = Tuple[str, int, tf.data.Dataset]


def _check_severities(severities) -> Tuple[int, ...]:
  severities = tuple(int(s) for s in severities)
  for severity in severities:
    if severity not in SEVERITIES:
      raise ValueError(f"Corruption severity must be in {SEVERITIES}, got {severity!r}.")
  return severities


def cifar10_c_datasets(data_dir=None, corruptions: Sequence[str] = CIFAR10_C_CORRUPTIONS,
                       severities: Sequence[int] = SEVERITIES) -> Iterator[CorruptedDataset]:
  """(corruption, severity, (uint8 image, int32 label) dataset) for CIFAR-10-C via TFDS.

  Names and severities are checked now; each TFDS config is loaded lazily when its turn comes.
  """
  severities = _check_severities(severities)
  corruptions = tuple(corruptions)
  for name in corruptions:
    if name not in CIFAR10_C_CORRUPTIONS:
      raise ValueError(f"Unknown CIFAR-10-C corruption {name!r}; expected one of "
                       f"{CIFAR10_C_CORRUPTIONS}.")

  def generate():
    from mixmo_tf import tfds_data  # Prepared once under data_dir, never re-downloaded.
    for name in corruptions:
      for severity in severities:
        ds, _, _ = tfds_data.load_split(f"cifar10_corrupted/{name}_{severity}", "test", data_dir)
        yield name, severity, ds
  return generate()


def cifar100_c_datasets(directory: str, corruptions: Sequence[str] = CIFAR100_C_CORRUPTIONS,
                        severities: Sequence[int] = SEVERITIES) -> Iterator[CorruptedDataset]:
  """(corruption, severity, (uint8 image, int32 label) dataset) from the released CIFAR-100-C.

  Format: `<directory>/<corruption>.npy` uint8 [5B, H, W, 3] holding severities 1..5 in consecutive
  blocks of B (B = 10,000 in the release, len(labels) // 5 for stand-ins), and
  `<directory>/labels.npy` [5B]. Every file is checked now (memory-mapped, so only headers are
  read); each block is read when its dataset is yielded.
  """
  severities = _check_severities(severities)
  labels_path = os.path.join(directory, "labels.npy")
  if not os.path.exists(labels_path):
    raise ValueError(f"CIFAR-100-C labels file not found: {labels_path}")
  labels = np.load(labels_path, mmap_mode="r")
  if labels.ndim != 1 or len(labels) == 0 or len(labels) % len(SEVERITIES):
    raise ValueError(f"{labels_path} must be 1-D with a multiple of {len(SEVERITIES)} entries "
                     f"(one block per severity), got shape {labels.shape}.")
  block = len(labels) // len(SEVERITIES)
  images = {}
  for name in corruptions:
    path = os.path.join(directory, f"{name}.npy")
    if not os.path.exists(path):
      raise ValueError(f"CIFAR-100-C file not found: {path}")
    array = np.load(path, mmap_mode="r")
    if array.ndim != 4 or array.shape[0] != len(labels) or array.shape[-1] != 3:
      raise ValueError(f"{path} must have shape [{len(labels)}, H, W, 3] to match {labels_path}, "
                       f"got {array.shape}.")
    if array.dtype != np.uint8:
      raise ValueError(f"{path} must hold uint8 images, got dtype {array.dtype}.")
    images[name] = array

  def generate():
    for name, array in images.items():
      for severity in severities:
        start = (severity - 1) * block
        x = np.ascontiguousarray(array[start:start + block])
        y = np.asarray(labels[start:start + block], np.int32)
        yield name, severity, tf.data.Dataset.from_tensor_slices((x, y))
  return generate()


def _counts(member_logits, labels, mode: str) -> Dict[str, float]:
  """Top-1 / Top-5 correct counts and NLL sum of the ensemble (ties as metrics.top_k_accuracy)."""
  probs = metrics.ensemble_probs(member_logits, mode)
  labels = np.asarray(labels)
  return {"top1": metrics.top_k_correct(probs, labels, 1),
          "top5": metrics.top_k_correct(probs, labels, 5),
          "nll": metrics.nll_sum(probs, labels), "num_examples": len(labels)}


def _rates(counts: Dict[str, float]) -> Dict[str, float]:
  n = counts["num_examples"]
  return {"top1": counts["top1"] / n, "top5": counts["top5"] / n, "nll": counts["nll"] / n,
          "num_examples": int(n)}


def evaluate_corruptions(predictor, datasets: Iterable[CorruptedDataset], mode: str = "logits",
                         batch_size: int = 500) -> Dict:
  """Pooled Top-1, Top-5 and uncalibrated NLL over all (corruption, severity) sets (docs/method.md §10.4).

  `predictor` maps uint8 images [B, H, W, 3] to member logits [B, M, K] (e.g. predict.Predictor);
  `mode` is the ensemble rule of metrics.ensemble_probs. Streams: only one set's logits are held
  at a time. Returns {"top1", "top5", "nll", "num_examples", "ensemble", "per_corruption":
  {name: {severity: {"top1", "top5", "nll", "num_examples"}}}}.
  """
  if mode not in ("logits", "probs"):
    raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}.")
  total = {"top1": 0, "top5": 0, "nll": 0.0, "num_examples": 0}
  per_corruption: Dict[str, Dict[int, Dict[str, float]]] = {}
  for name, severity, ds in datasets:
    if severity in per_corruption.get(name, {}):
      raise ValueError(f"Corruption {name!r} severity {severity} was given twice.")
    logits, labels = predict_dataset(predictor, ds, batch_size,
                                     name=f"Corruption {name!r} severity {severity}")
    counts = _counts(logits, labels, mode)
    for key in total:
      total[key] += counts[key]
    per_corruption.setdefault(name, {})[int(severity)] = _rates(counts)
  if total["num_examples"] == 0:
    raise ValueError("evaluate_corruptions got no (corruption, severity, dataset) to evaluate.")
  return {**_rates(total), "ensemble": mode, "per_corruption": per_corruption}

"""Robustness to common corruptions (docs/method.md §10.4): pooled metrics over every set.

19 corruptions x 5 severities, all pooled; Top-1, Top-5 and **uncalibrated** NLL of the ensemble
(no temperature scaling with corruptions), with the clean test set's normalisation (the predictor
does it). A per corruption / severity breakdown is returned as well. The sets come from
`data.corrupted` (released .npy folders on every backend, or TFDS for CIFAR-10-C).
"""

from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

from mixmo_tf.data.corrupted import CorruptedSet, corrupted_sets
from mixmo_tf.evaluation import metrics
from mixmo_tf.evaluation.predict import predict_batches


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


def evaluate_corruptions(predictor, sets: Iterable[CorruptedSet], mode: str = "logits",
                         batch_size: int = 500) -> Dict:
  """Pooled Top-1, Top-5 and uncalibrated NLL over all (corruption, severity) sets (docs/method.md §10.4).

  `sets` yields (corruption, severity, uint8 images, labels); `predictor` maps uint8 images
  [B, H, W, 3] to member logits [B, M, K] (`evaluation.predict.Predictor`);
  `mode` is the ensemble rule of metrics.ensemble_probs. Streams: only one set's logits are held
  at a time. Returns {"top1", "top5", "nll", "num_examples", "ensemble", "per_corruption":
  {name: {severity: {"top1", "top5", "nll", "num_examples"}}}}.
  """
  if mode not in ("logits", "probs"):
    raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}.")
  total = {"top1": 0, "top5": 0, "nll": 0.0, "num_examples": 0}
  per_corruption: Dict[str, Dict[int, Dict[str, float]]] = {}
  for name, severity, images, labels in sets:
    if severity in per_corruption.get(name, {}):
      raise ValueError(f"Corruption {name!r} severity {severity} was given twice.")
    logits, labels = predict_batches(predictor, (images, labels), batch_size,
                                     name=f"Corruption {name!r} severity {severity}")
    counts = _counts(logits, labels, mode)
    for key in total:
      total[key] += counts[key]
    per_corruption.setdefault(name, {})[int(severity)] = _rates(counts)
  if total["num_examples"] == 0:
    raise ValueError("evaluate_corruptions got no (corruption, severity, dataset) to evaluate.")
  return {**_rates(total), "ensemble": mode, "per_corruption": per_corruption}


def corruption_results(predictor, kind: str, directory: str = "", mode: str = "logits") -> Dict:
  """`evaluate_corruptions` over the sets of `--corruptions=kind` (`data.corrupted`)."""
  return evaluate_corruptions(predictor, corrupted_sets(kind, directory), mode)

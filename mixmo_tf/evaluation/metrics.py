"""Evaluation metrics of the paper (docs/method.md §10), on NumPy arrays of a whole test set.

Inputs are member logits [N, M, K] and integer labels [N]. The ensemble is the softmax of the mean
member logit (the official implementation, whose numbers the paper reports) or, optionally, the mean
of member probabilities (uncertainty-baselines).
"""

from __future__ import annotations

import itertools
from typing import Dict

import numpy as np

NLL_EPS = 1e-12  # docs/method.md §10.2: NLL = mean(-log(p_y + 1e-12)).
TEST_SPLIT_SEED = 31  # docs/method.md §10.3: the fixed half/half split of the test set.


def softmax(logits, axis=-1):
  z = logits - logits.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def ensemble_logits(member_logits) -> np.ndarray:
  """Mean member logit [N, K] (docs/method.md §10.1)."""
  return np.asarray(member_logits, np.float64).mean(axis=1)


def ensemble_probs(member_logits, mode: str = "logits") -> np.ndarray:
  """Ensemble probabilities [N, K]: softmax(mean logit) ('logits') or mean softmax ('probs')."""
  member_logits = np.asarray(member_logits, np.float64)
  if mode == "logits":
    return softmax(member_logits.mean(axis=1))
  if mode == "probs":
    return softmax(member_logits).mean(axis=1)
  raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}.")


def top_k_correct(probs, labels, k: int = 1) -> int:
  """How many labels are among the k most probable classes.

  Ties count in the label's favour, as `tf.math.in_top_k`: correct iff fewer than k classes have a
  strictly larger probability than the label's.
  """
  probs = np.asarray(probs)
  target = probs[np.arange(len(labels)), labels]
  rank = (probs > target[:, None]).sum(axis=1)
  return int(np.sum(rank < k))


def top_k_accuracy(probs, labels, k: int = 1) -> float:
  """Fraction whose label is among the k most probable classes (ties as `top_k_correct`)."""
  return top_k_correct(probs, labels, k) / len(labels)


def nll_sum(probs, labels) -> float:
  """sum_n -log(p_n(y_n) + 1e-12) (docs/method.md §10.2)."""
  probs = np.asarray(probs, np.float64)
  return float(np.sum(-np.log(probs[np.arange(len(labels)), labels] + NLL_EPS)))


def nll(probs, labels) -> float:
  return nll_sum(probs, labels) / len(labels)


def calibration_bins(probs, labels, num_bins: int = 15):
  """Equal-width confidence bins (l, u] on [0, 1] (docs/method.md §10.2).

  Returns (counts, accuracy, mean confidence) per bin, each [num_bins] (0 in empty bins).
  """
  probs = np.asarray(probs, np.float64)
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / np.maximum(counts, 1)
  mean_conf = np.bincount(bins, weights=confidence, minlength=num_bins) / np.maximum(counts, 1)
  return counts, accuracy, mean_conf


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
  """ECE = sum_b n_b / N |acc_b - conf_b| over `calibration_bins` (docs/method.md §10.2)."""
  counts, accuracy, confidence = calibration_bins(probs, labels, num_bins)
  return float(np.sum(counts / counts.sum() * np.abs(accuracy - confidence)))


def ratio_error_diversity(member_logits, labels) -> float:
  """Ratio-error diversity d_re (Sec. 4.3.2), mean over member pairs.

  For members a, b: (N01 + N10) / N00 with N00 the fraction both wrong and N01 + N10 the fraction
  exactly one wrong; when N00 = 0 the official code returns 2 (N01 + N10).
  """
  wrong = np.asarray(member_logits).argmax(axis=2) != np.asarray(labels)[:, None]  # [N, M]
  values = []
  for a, b in itertools.combinations(range(wrong.shape[1]), 2):
    both = np.mean(wrong[:, a] & wrong[:, b])
    one = np.mean(wrong[:, a] ^ wrong[:, b])
    values.append(one / both if both > 0 else 2.0 * one)
  return float(np.mean(values)) if values else 0.0


def fit_temperature(logits, labels, max_iterations: int = 100) -> float:
  """Temperature T minimising the NLL of softmax(logits / T) (docs/method.md §10.3).

  The NLL is convex in beta = 1/T, so Newton's method on beta reaches the global minimum the
  reference's L-BFGS restarts look for. Returns 1.0 if no beta > 0 improves on T = 1.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  target = logits[np.arange(len(labels)), labels]

  def loss_grad_hess(beta):
    p = softmax(beta * logits)
    mean_z = (p * logits).sum(1)
    var_z = (p * logits**2).sum(1) - mean_z**2
    z = beta * logits
    lse = z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
    return np.mean(lse - beta * target), np.mean(mean_z - target), np.mean(var_z)

  beta = 1.0
  for _ in range(max_iterations):
    _, grad, hess = loss_grad_hess(beta)
    step = grad / max(hess, 1e-12)
    new_beta = beta - step
    if new_beta <= 0:  # Keep beta positive: halve towards zero instead of crossing it.
      new_beta = beta / 2
    if abs(new_beta - beta) < 1e-10 * max(1.0, beta):
      beta = new_beta
      break
    beta = new_beta
  if not np.isfinite(beta) or loss_grad_hess(beta)[0] > loss_grad_hess(1.0)[0]:
    return 1.0
  return float(1.0 / beta)


def calibration_split(num_examples: int, seed: int = TEST_SPLIT_SEED):
  """The fixed two halves of the test set (docs/method.md §10.3: shuffle 0..N-1 with legacy seed 31)."""
  order = np.arange(num_examples)
  np.random.RandomState(seed).shuffle(order)
  half = num_examples // 2
  return order[:half], order[half:]


def _prob_metrics(probs, labels, prefix=""):
  return {f"{prefix}nll": nll(probs, labels), f"{prefix}ece": expected_calibration_error(probs, labels)}


def calibrated_metrics(member_logits, labels, mode: str = "logits") -> Dict[str, float]:
  """NLL_c and ECE_c by two-fold temperature scaling after averaging (docs/method.md §10.3).

  Fit T on half A, evaluate on half B, swap, and average the two halves' metrics. With
  mode='probs' the temperature scales the log of the averaged probabilities.
  """
  member_logits = np.asarray(member_logits, np.float64)
  labels = np.asarray(labels)
  if mode == "logits":
    scores = ensemble_logits(member_logits)
  else:
    scores = np.log(ensemble_probs(member_logits, "probs") + NLL_EPS)
  half_a, half_b = calibration_split(len(labels))
  results, temperatures = [], []
  for fit, held_out in ((half_a, half_b), (half_b, half_a)):
    t = fit_temperature(scores[fit], labels[fit])
    temperatures.append(t)
    results.append(_prob_metrics(softmax(scores[held_out] / t), labels[held_out]))
  return {"nll_c": float(np.mean([r["nll"] for r in results])),
          "ece_c": float(np.mean([r["ece"] for r in results])),
          "temperature": float(np.mean(temperatures))}


def evaluate_logits(member_logits, labels, mode: str = "logits",
                    calibrate: bool = True) -> Dict[str, float]:
  """All test metrics of a run: ensemble Top-1/5, NLL, ECE, NLL_c, per-member, diversity."""
  member_logits = np.asarray(member_logits, np.float64)
  labels = np.asarray(labels)
  probs = ensemble_probs(member_logits, mode)
  results = {"top1": top_k_accuracy(probs, labels, 1), "top5": top_k_accuracy(probs, labels, 5),
             **_prob_metrics(probs, labels), "ensemble": mode, "num_examples": int(len(labels))}
  if calibrate and len(labels) >= 4:
    results.update(calibrated_metrics(member_logits, labels, mode))
  member_top1 = []
  for i in range(member_logits.shape[1]):
    p = softmax(member_logits[:, i])
    member_top1.append(top_k_accuracy(p, labels, 1))
    results[f"top1_member_{i}"] = member_top1[-1]
    results[f"nll_member_{i}"] = nll(p, labels)
  results["top1_members_mean"] = float(np.mean(member_top1))
  if member_logits.shape[1] > 1:
    results["diversity_dre"] = ratio_error_diversity(member_logits, labels)
  return results

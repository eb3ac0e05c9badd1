"""Out-of-distribution detection from member logits: uncertainty scores and detection metrics.

Pure NumPy. Every score is oriented so that HIGHER means MORE LIKELY out-of-distribution (OOD), and
every metric treats OOD as the positive class unless its name says otherwise (AUPR-in).
"""

from __future__ import annotations

import itertools
from typing import Dict, Tuple

import numpy as np

from mixmo_tf.evaluation import metrics

TPR_LEVEL_PERCENT = 95  # FPR@95: false positive rate once 95% of the OOD examples are detected.
METRIC_COLUMNS = (("AUROC", "auroc"), ("AUPR-in", "aupr_in"), ("AUPR-out", "aupr_out"),
                  ("FPR@95", "fpr95"))


def _member_logits(member_logits, name: str = "member_logits") -> np.ndarray:
  member_logits = np.asarray(member_logits, np.float64)
  if member_logits.ndim != 3 or 0 in member_logits.shape:
    raise ValueError(f"{name} must be a non-empty [N, M, K] array, got shape "
                     f"{member_logits.shape}.")
  return member_logits


def _entropy(probs) -> np.ndarray:
  """Entropy (nats) along the last axis; 0 log 0 = 0 for probabilities that underflowed to 0."""
  return -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(axis=-1)


def uncertainty_scores(member_logits, mode: str = "logits") -> Dict[str, np.ndarray]:
  """Per-example OOD scores [N] from member logits [N, M, K]; higher = more likely OOD.

  'msp' (1 - max ensemble probability) and 'entropy' use `metrics.ensemble_probs(member_logits,
  mode)`. With M > 1 also 'mutual_information', H(mean member probs) - mean member entropy, whose
  first term always uses the mean of member softmaxes whatever `mode` is (so it is >= 0, Jensen),
  and 'disagreement', the fraction of the M(M-1)/2 member pairs whose argmax differ.
  """
  member_logits = _member_logits(member_logits)
  probs = metrics.ensemble_probs(member_logits, mode)
  scores = {"msp": 1.0 - probs.max(axis=1), "entropy": _entropy(probs)}
  num_members = member_logits.shape[1]
  if num_members > 1:
    member_probs = metrics.softmax(member_logits)  # [N, M, K]
    mutual_information = _entropy(member_probs.mean(axis=1)) - _entropy(member_probs).mean(axis=1)
    scores["mutual_information"] = np.maximum(mutual_information, 0.0)  # Rounding negatives.
    predictions = member_logits.argmax(axis=2)  # [N, M]
    pairs = list(itertools.combinations(range(num_members), 2))
    scores["disagreement"] = np.mean(
        [predictions[:, a] != predictions[:, b] for a, b in pairs], axis=0)
  return scores


def check_scores(values, name: str) -> np.ndarray:
  """`values` as a float64 1-D array; ValueError, naming `name`, if empty or not all finite."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of scores, got shape {values.shape}.")
  if not len(values):
    raise ValueError(f"{name} is empty: OOD metrics need at least one score per set.")
  bad = ~np.isfinite(values)
  if bad.any():
    raise ValueError(f"{name} has {int(bad.sum())} non-finite scores (first: "
                     f"{values[bad][0]!r} at index {int(np.flatnonzero(bad)[0])}).")
  return values


def _cumulative_counts(negatives, positives) -> Tuple[np.ndarray, np.ndarray]:
  """(false positives, true positives) flagged by `score >= t`, t = each distinct score, descending.

  Equal scores form one threshold, as scikit-learn's `_binary_clf_curve`.
  """
  values = np.concatenate([positives, negatives])
  is_positive = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
  order = np.argsort(-values, kind="mergesort")
  values, is_positive = values[order], is_positive[order]
  last_of_group = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]
  true_positives = np.cumsum(is_positive)[last_of_group]
  false_positives = last_of_group + 1 - true_positives
  return false_positives, true_positives


def roc_curve(in_scores, out_scores) -> Tuple[np.ndarray, np.ndarray]:
  """ROC points (fpr, tpr) with OOD positive, from (0, 0) through every distinct threshold."""
  in_scores = check_scores(in_scores, "in_scores")
  out_scores = check_scores(out_scores, "out_scores")
  false_positives, true_positives = _cumulative_counts(in_scores, out_scores)
  return (np.r_[0.0, false_positives / len(in_scores)],
          np.r_[0.0, true_positives / len(out_scores)])


def _average_precision(negatives, positives) -> float:
  """scikit-learn's average precision: sum over thresholds of (R_k - R_{k-1}) P_k, no interpolation.

  Here `negatives` and `positives` are scores with the positive class's examples expected higher.
  """
  false_positives, true_positives = _cumulative_counts(negatives, positives)
  precision = true_positives / (true_positives + false_positives)
  recall_steps = np.diff(np.r_[0.0, true_positives]) / len(positives)
  return float(np.sum(recall_steps * precision))


def _auroc(in_scores, out_scores) -> float:
  """Mann-Whitney U / (n_in n_out) from average ranks: P(out > in) + P(out = in) / 2."""
  values = np.concatenate([in_scores, out_scores])
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]  # First index of each tie group.
  ends = np.r_[starts[1:], len(values)]
  ranks = np.empty(len(values))
  ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)  # Average 1-based rank.
  num_in, num_out = len(in_scores), len(out_scores)
  u_statistic = ranks[num_in:].sum() - num_out * (num_out + 1) / 2.0
  return float(u_statistic / (num_in * num_out))


def _fpr_at_tpr(in_scores, out_scores, percent: int = TPR_LEVEL_PERCENT) -> float:
  """Fraction of in-distribution scores >= t, t the ceil(percent% n_out)-th largest OOD score."""
  num_detected = -(-percent * len(out_scores) // 100)  # Exact integer ceil, no float 0.95.
  threshold = np.sort(out_scores)[::-1][num_detected - 1]
  return float(np.mean(in_scores >= threshold))


def detection_metrics(in_scores, out_scores) -> Dict[str, float]:
  """AUROC, AUPR-out, AUPR-in and FPR@95 of separating OOD (positive) from in-distribution.

  auroc: Mann-Whitney statistic, ties count 1/2. aupr_out: average precision (scikit-learn's
  definition) with OOD positive; aupr_in: with in-distribution positive and negated scores.
  fpr95: an example is flagged OOD when its score >= t (ties at t are flagged), with t the largest
  threshold detecting at least 95% of the OOD scores (the ceil(0.95 n_out)-th largest OOD score),
  i.e. the lowest FPR at TPR >= 0.95; fpr95 is the fraction of in-distribution scores >= t.
  """
  in_scores = check_scores(in_scores, "in_scores")
  out_scores = check_scores(out_scores, "out_scores")
  return {"auroc": _auroc(in_scores, out_scores),
          "aupr_in": _average_precision(-out_scores, -in_scores),
          "aupr_out": _average_precision(in_scores, out_scores),
          "fpr95": _fpr_at_tpr(in_scores, out_scores)}


def evaluate_ood(in_logits, out_logits, mode: str = "logits") -> Dict[str, Dict[str, float]]:
  """{score name: detection_metrics} for every score of `uncertainty_scores` (M = 1: msp, entropy).

  in_logits [N_in, M, K] and out_logits [N_out, M, K] must come from the same M members and K
  classes.
  """
  in_logits = _member_logits(in_logits, "in_logits")
  out_logits = _member_logits(out_logits, "out_logits")
  if in_logits.shape[1:] != out_logits.shape[1:]:
    raise ValueError(f"in_logits shape {in_logits.shape} and out_logits shape {out_logits.shape} "
                     "must share M (axis 1) and K (axis 2).")
  in_scores = uncertainty_scores(in_logits, mode)
  out_scores = uncertainty_scores(out_logits, mode)
  return {name: detection_metrics(in_scores[name], out_scores[name]) for name in in_scores}


def markdown_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
  """One row per (OOD set, score) of {set name: evaluate_ood output}, metrics in percent."""
  header = "| OOD set | score | " + " | ".join(title for title, _ in METRIC_COLUMNS) + " |"
  rule = "|" + "---|" * (len(METRIC_COLUMNS) + 2)
  rows = []
  for set_name, by_score in results.items():
    for score_name, values in by_score.items():
      cells = [f"{100 * values[key]:.2f}" for _, key in METRIC_COLUMNS]
      rows.append(f"| {set_name} | {score_name} | " + " | ".join(cells) + " |")
  return "\n".join([header, rule] + rows) + "\n"

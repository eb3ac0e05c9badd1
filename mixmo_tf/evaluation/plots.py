"""Headless PNG plots of a trained MixMo model: calibration, members vs ensemble, filter usage.

`write_all` is what `python -m mixmo_tf.evaluate --plots` calls. The filter plots reproduce PAPER
Fig. 4a (L1 norms of the stems' filters) and Fig. 4b (fraction of active trunk filters, docs/method.md §10.6). Every figure is FIGSIZE at DPI (600x400 pixels) and closed after saving.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # Headless: no display on training machines or CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mixmo_tf.evaluation import metrics  # noqa: E402

FIGSIZE = (6, 4)  # Inches; with DPI gives 600x400 PNGs.
DPI = 100
ACTIVE_THRESHOLD = 0.4  # docs/method.md §10.6: PAPER counts a filter active at >= 0.4 x the layer max.
SHORTCUT_SUFFIX = "_shortcut"  # 1x1 projection convs, skipped by OFF's notebook (docs/method.md §10.6).


def _save(fig, path: str) -> str:
  """Saves at the fixed size (no bbox_inches='tight', which would change it) and closes."""
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def _kernel(layer) -> np.ndarray:
  """A Conv2D kernel [kh, kw, in, out] as float64 NumPy."""
  import keras
  return np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float64)


def filter_l1_norms(layer) -> np.ndarray:
  """L1 norm of each output filter [out] of a Conv2D: sum of |w| over kernel and input channels."""
  return np.abs(_kernel(layer)).sum(axis=(0, 1, 2))


def _num_members(model) -> int:
  if getattr(model, "num_members", None):
    return int(model.num_members)
  names = {layer.name for layer in model.layers}
  count = 0
  while f"stem_{count}" in names:
    count += 1
  if count == 0:
    raise ValueError(f"Model {model.name!r} has no layer named 'stem_0'.")
  return count


def _stem_names(model) -> List[str]:
  return [f"stem_{i}" for i in range(_num_members(model))]


def _trunk_convs(model):
  """Trunk Conv2D layers (docs/method.md §10.6): all Conv2D but the M stems and the 1x1 `_shortcut`s."""
  import keras
  stems = set(_stem_names(model))
  return [layer for layer in model.layers
          if isinstance(layer, keras.layers.Conv2D) and layer.name not in stems
          and not layer.name.endswith(SHORTCUT_SUFFIX)]


def reliability_diagram(probs, labels, path: str, num_bins: int = 15) -> str:
  """Accuracy per confidence bin vs the diagonal, ECE in the title (docs/method.md §10.2 binning)."""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2 or len(probs) != len(labels):
    raise ValueError(f"probs must be [N, K] with N = len(labels) = {len(labels)}, got shape "
                     f"{probs.shape}.")
  counts, accuracy, mean_conf = metrics.calibration_bins(probs, labels, num_bins)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  centres = (edges[:-1] + edges[1:]) / 2
  width = 1.0 / num_bins
  filled = counts > 0
  ece = metrics.expected_calibration_error(probs, labels, num_bins)

  fig, ax = plt.subplots(figsize=FIGSIZE)
  ax.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", color="tab:blue",
         label="accuracy")
  gap_bottom = np.minimum(accuracy, mean_conf)[filled]
  ax.bar(centres[filled], np.abs(mean_conf - accuracy)[filled], bottom=gap_bottom, width=width,
         fill=False, hatch="//", edgecolor="tab:red", linewidth=0.8, label="gap to confidence")
  ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence (max probability)")
  ax.set_ylabel("accuracy")
  ax.set_title(f"Reliability ({num_bins} bins): ECE = {100 * ece:.2f}%, N = {len(labels)}")
  ax.legend(loc="upper left")
  return _save(fig, path)


def stem_filter_norms(model, path: str) -> str:
  """PAPER Fig. 4a: L1 norm of each output filter of each stem c_0..c_{M-1}, as grouped bars."""
  names = _stem_names(model)
  norms = [filter_l1_norms(model.get_layer(name)) for name in names]
  num_filters = len(norms[0])
  x = np.arange(num_filters)
  width = 0.8 / len(names)
  fig, ax = plt.subplots(figsize=FIGSIZE)
  for i, (name, values) in enumerate(zip(names, norms)):
    ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width=width, label=f"c_{i} ({name})")
  ax.set_xticks(x)
  ax.set_xticklabels([str(i) for i in x], fontsize=7)
  ax.set_xlabel("stem output filter")
  ax.set_ylabel("L1 norm")
  ax.set_title("Stem filter L1 norms (Fig. 4a)")
  ax.legend()
  return _save(fig, path)


def active_filter_fraction(model, threshold: float = ACTIVE_THRESHOLD) -> List[Tuple[str, float]]:
  """(layer name, fraction of active filters) per trunk conv (docs/method.md §10.6).

  A filter is active when its L1 norm is >= threshold x the layer's largest (PAPER's inclusive
  rule; OFF's notebook uses strict >). An all-zero layer has no active filter.
  """
  results = []
  for layer in _trunk_convs(model):
    norms = filter_l1_norms(layer)
    top = norms.max()
    fraction = float(np.mean(norms / top >= threshold)) if top > 0 else 0.0
    results.append((layer.name, fraction))
  return results


def active_filters_plot(model, path: str, threshold: float = ACTIVE_THRESHOLD) -> str:
  """PAPER Fig. 4b: fraction of active filters per trunk conv, unweighted mean in the title."""
  fractions = active_filter_fraction(model, threshold)
  if not fractions:
    raise ValueError(f"Model {model.name!r} has no trunk Conv2D layer to analyse.")
  names = [name for name, _ in fractions]
  values = [value for _, value in fractions]
  fig, ax = plt.subplots(figsize=FIGSIZE)
  ax.bar(np.arange(len(values)), values, color="tab:green")
  ax.set_xticks(np.arange(len(values)))
  ax.set_xticklabels(names, rotation=90, fontsize=5 if len(names) > 12 else 7)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel(f"fraction with L1 >= {threshold:g} x max")
  ax.set_title(f"Active filters (Fig. 4b): mean {100 * np.mean(values):.1f}% over "
               f"{len(values)} layers")
  return _save(fig, path)


def member_vs_ensemble(logits, labels, path: str, mode: str = "logits") -> str:
  """Top-1 of each member (softmax of its logits) next to the ensemble's (docs/method.md §10.1)."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  if logits.ndim != 3 or len(logits) != len(labels):
    raise ValueError(f"logits must be [N, M, K] with N = len(labels) = {len(labels)}, got shape "
                     f"{logits.shape}.")
  num_members = logits.shape[1]
  values = [metrics.top_k_accuracy(metrics.softmax(logits[:, i]), labels, 1)
            for i in range(num_members)]
  values.append(metrics.top_k_accuracy(metrics.ensemble_probs(logits, mode), labels, 1))
  names = [f"member {i}" for i in range(num_members)] + [f"ensemble\n({mode})"]
  colours = ["tab:blue"] * num_members + ["tab:orange"]
  fig, ax = plt.subplots(figsize=FIGSIZE)
  bars = ax.bar(np.arange(len(values)), [100 * v for v in values], color=colours)
  for bar, value in zip(bars, values):
    ax.annotate(f"{100 * value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8)
  ax.set_xticks(np.arange(len(values)))
  ax.set_xticklabels(names)
  ax.set_ylim(0, 105)
  ax.set_ylabel("Top-1 (%)")
  ax.set_title(f"Members vs ensemble, N = {len(labels)}")
  return _save(fig, path)


def learning_curves(curves: Dict[str, Sequence[Tuple[int, float]]], path: str,
                    title: str = "Test Top-1 per epoch") -> str:
  """Test Top-1 (%) against epoch, one line per run; curves maps run name -> [(epoch, top1)]."""
  if not curves:
    raise ValueError("learning_curves needs at least one run's [(epoch, top1)] values.")
  fig, ax = plt.subplots(figsize=FIGSIZE)
  for name, values in curves.items():
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[1] != 2 or not len(values):
      raise ValueError(f"Run {name!r}: expected [(epoch, top1), ...], got shape {values.shape}.")
    ax.plot(values[:, 0], 100 * values[:, 1], marker="o", markersize=3, label=name)
  ax.set_xlabel("epoch")
  ax.set_ylabel("test Top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title)
  return _save(fig, path)


def write_all(out_dir: str, logits, labels, mode: str = "logits", model=None) -> List[str]:
  """Writes reliability.png and member_vs_ensemble.png, plus the two filter plots given a model."""
  os.makedirs(out_dir, exist_ok=True)
  probs = metrics.ensemble_probs(logits, mode)
  paths = [reliability_diagram(probs, labels, os.path.join(out_dir, "reliability.png")),
           member_vs_ensemble(logits, labels, os.path.join(out_dir, "member_vs_ensemble.png"),
                              mode)]
  if model is not None:
    paths.append(stem_filter_norms(model, os.path.join(out_dir, "stem_filters.png")))
    paths.append(active_filters_plot(model, os.path.join(out_dir, "active_filters.png")))
  return paths


def ood_score_histograms(in_scores, out_scores, path: str, title: str) -> str:
  """Overlaid density histograms of one OOD score, in- vs out-of-distribution, on shared bins."""
  from mixmo_tf.evaluation import ood
  in_scores = ood.check_scores(in_scores, "in_scores")
  out_scores = ood.check_scores(out_scores, "out_scores")
  bins = np.histogram_bin_edges(np.concatenate([in_scores, out_scores]), bins=30)
  fig, ax = plt.subplots(figsize=FIGSIZE)
  ax.hist(in_scores, bins=bins, density=True, alpha=0.5, color="tab:blue",
          label=f"in-distribution (N = {len(in_scores)})")
  ax.hist(out_scores, bins=bins, density=True, alpha=0.5, color="tab:red",
          label=f"OOD (N = {len(out_scores)})")
  ax.set_xlabel("score (higher = more likely OOD)")
  ax.set_ylabel("density")
  ax.set_title(title)
  ax.legend()
  return _save(fig, path)


def ood_roc_curves(scores_by_name: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str,
                   title: str) -> str:
  """ROC curve (OOD positive) of each score; scores_by_name maps name -> (in_scores, out_scores)."""
  from mixmo_tf.evaluation import ood
  if not scores_by_name:
    raise ValueError("ood_roc_curves needs at least one score's (in_scores, out_scores).")
  fig, ax = plt.subplots(figsize=FIGSIZE)
  for name, (in_scores, out_scores) in scores_by_name.items():
    fpr, tpr = ood.roc_curve(in_scores, out_scores)
    auroc = ood.detection_metrics(in_scores, out_scores)["auroc"]
    ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * auroc:.2f}%)")
  ax.plot([0, 1], [0, 1], "k--", label="chance")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("false positive rate (in-distribution flagged)")
  ax.set_ylabel("true positive rate (OOD detected)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)

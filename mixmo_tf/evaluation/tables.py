"""Markdown tables of runs in the layout of the paper's Table 1, and their OOD and curve companions.

`markdown_row` / `markdown_table` format metrics dicts; `table` reads many run folders (their
metrics.json from `evaluate`, else results.json from training, else ensemble_results.json from
`baselines.ensemble`), `ood_table` the OOD detection results, `curves` the test Top-1 per epoch.
`python -m mixmo_tf.tables` is the command around them.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from mixmo_tf.evaluation.ood import METRIC_COLUMNS as OOD_COLUMNS

TABLE_COLUMNS = (("Top-1", "top1", 100, 2), ("Top-5", "top5", 100, 2), ("NLL", "nll", 1, 3),
                 ("NLL_c", "nll_c", 1, 3), ("ECE", "ece", 100, 2), ("Members Top-1",
                                                                   "top1_members_mean", 100, 2),
                 ("d_re", "diversity_dre", 1, 3))


TIMING_COLUMNS = (("train min", "train_seconds", 1 / 60, 1),
                  ("img/s", "train_images_per_second", 1, 0))


def markdown_row(name: str, results: Dict, columns=TABLE_COLUMNS) -> str:
  """One Markdown table row in the layout of Table 1 (percentages for accuracies and ECE)."""
  cells = [name]
  for _, key, scale, digits in columns:
    value = results.get(key)
    if value is None:
      cells.append("-")
    else:  # scale None: a preformatted cell.
      cells.append(str(value) if scale is None else f"{value * scale:.{digits}f}")
  return "| " + " | ".join(cells) + " |"


def markdown_table(rows: Dict[str, Dict], columns=TABLE_COLUMNS) -> str:
  header = "| run | " + " | ".join(c[0] for c in columns) + " |"
  rule = "|" + "---|" * (len(columns) + 1)
  return "\n".join([header, rule] + [markdown_row(n, r, columns) for n, r in rows.items()]) + "\n"


SOURCES = ("metrics.json", "results.json", "ensemble_results.json")
MEMBERS_KEY = "members_top1_text"  # A preformatted column: "a / b / ..." in percent.


def _read(path: str) -> Dict:
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}).") from None
  if not isinstance(values, dict):
    raise ValueError(f"{path} does not hold a JSON object.")
  return values


def load_run_metrics(run_dir: str) -> Dict:
  """The metrics of a run folder (the first of SOURCES found); ValueError naming an unfinished
  run's missing artifacts, or a folder that is no run."""
  from mixmo_tf.run_folder import RunFolder
  from mixmo_tf.run_folder.folder import CONFIG
  folder = RunFolder(run_dir)
  for name in SOURCES:
    if os.path.exists(folder.file(name)):
      values = _read(folder.file(name))
      if values.get("unfinished") and folder.is_complete():
        continue  # Evaluated before the run finished, which it since has.
      return values["ensemble"] if name == "ensemble_results.json" else values
  if os.path.exists(folder.file(CONFIG)):
    missing = folder.missing_artifacts()
    raise ValueError(f"{run_dir!r} is unfinished: {', '.join(missing)} missing. Rerun its "
                     "training command to complete it (a finished training is not repeated).")
  raise ValueError(f"{run_dir!r} is not a run folder: it holds none of {', '.join(SOURCES)}.")


def member_top1s(results: Dict) -> List[float]:
  """top1_member_0, top1_member_1, ... in member order (the driver's and evaluate's keys)."""
  values, i = [], 0
  while f"top1_member_{i}" in results:
    values.append(results[f"top1_member_{i}"])
    i += 1
  return values


def run_name(run_dir: str) -> str:
  return os.path.basename(os.path.normpath(run_dir))


def table(run_dirs: Sequence[str], members: bool = False, timing: bool = False,
          best_on_test: bool = False) -> str:
  """Markdown rows of the runs' last-epoch metrics; with `best_on_test`, each run's epoch of best
  test Top-1 instead, labelled so (selected on the test set, as the official numbers are)."""
  rows = {}
  for d in run_dirs:
    values = dict(load_run_metrics(d))
    if best_on_test:
      best = values.get("best_on_test")
      if not best:
        raise ValueError(f"{d!r} records no best_on_test epoch (results.json of a run trained "
                         "with evaluation every epoch).")
      values = dict(best)  # Only what was recorded for that epoch; other columns stay empty.
      rows[f"{run_name(d)} (best on test: epoch {best['epoch']})"] = values
    elif values.get("unfinished"):  # Evaluated before its run finished (`evaluate_run`).
      rows[f"{run_name(d)} (unfinished)"] = values
    else:
      rows[run_name(d)] = values
  columns = list(TABLE_COLUMNS)
  if members:
    # Every member's Top-1 replaces their mean.
    columns = [c for c in columns if c[1] != "top1_members_mean"]
    columns.insert(5, ("members Top-1", MEMBERS_KEY, None, None))
    for r in rows.values():
      tops = member_top1s(r)
      r[MEMBERS_KEY] = " / ".join(f"{100 * v:.2f}" for v in tops) if tops else None
  if timing:
    columns += list(TIMING_COLUMNS)
  return markdown_table(rows, tuple(columns))


def load_run_ood(run_dir: str) -> Dict:
  """{set: {score: metrics}} from the first of SOURCES that holds OOD results ({} if none): a
  run re-evaluated without --ood keeps the OOD results its driver wrote to results.json."""
  for name in SOURCES:
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      values = _read(path)
      found = (values.get("ensemble", {}) if name == "ensemble_results.json" else values).get("ood")
      if found:
        return found
  return {}


def ood_table(runs: Dict[str, Dict], top1: Optional[Dict[str, float]] = None) -> str:
  """One Markdown row per (run, OOD set, score) of {run: {set: {score: metrics}}}, in percent.

  `top1` ({run: Top-1}) adds a Top-1 column after the run name.
  """
  titles = ["run"] + (["Top-1"] if top1 is not None else []) + ["OOD set", "score"]
  titles += [title for title, _ in OOD_COLUMNS]
  lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
  for run, by_set in runs.items():
    lead = [run] + ([f"{100 * top1[run]:.2f}"] if top1 is not None else [])
    for set_name, by_score in by_set.items():
      for score, values in by_score.items():
        cells = lead + [set_name, score] + [f"{100 * values[key]:.2f}" for _, key in OOD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def curves(run_dirs: Sequence[str]) -> Dict[str, List[Tuple[int, float]]]:
  """Test Top-1 per epoch of each run that recorded it (results.json's test_top1_per_epoch)."""
  out = {}
  for d in run_dirs:
    values = load_run_metrics(d).get("test_top1_per_epoch")
    if values:
      out[run_name(d)] = [(int(e), float(t)) for e, t in values]
  return out

"""`python -m mixmo_tf.tables RUN_DIR ...`: many runs' metrics -> one Markdown table (Table 1 layout).

Reads each run's metrics.json (written by mixmo_tf.evaluate) or, failing that, its results.json
(written by the driver) or ensemble_results.json (baselines/ensemble.py); rows are named after the
run directories. `--members` adds every member's Top-1, `--timing` the train time and images/s,
`--curves=PNG` plots the test Top-1 per epoch of every run that recorded it, `--ood` adds a second
table: one row per (run, OOD set, score) with AUROC / AUPR-in / AUPR-out / FPR@95, so that MixMo,
vanilla and deep-ensemble runs scored on the same sets compare on one table (docs/method.md §17).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from mixmo_tf.evaluate import TABLE_COLUMNS, TIMING_COLUMNS, markdown_table
from mixmo_tf.ood import METRIC_COLUMNS as OOD_COLUMNS

SOURCES = ("metrics.json", "results.json", "ensemble_results.json")
MEMBERS_KEY = "members_top1_text"  # A preformatted column: "a / b / ..." in percent.


def load_run_metrics(run_dir: str) -> Dict:
  for name in SOURCES:
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      with open(path) as f:
        values = json.load(f)
      return values["ensemble"] if name == "ensemble_results.json" else values
  raise ValueError(f"{run_dir!r} holds none of {', '.join(SOURCES)}.")


def member_top1s(results: Dict) -> List[float]:
  """top1_member_0, top1_member_1, ... in member order (the driver's and evaluate's keys)."""
  values, i = [], 0
  while f"top1_member_{i}" in results:
    values.append(results[f"top1_member_{i}"])
    i += 1
  return values


def _run_name(run_dir: str) -> str:
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
      rows[f"{_run_name(d)} (best on test: epoch {best['epoch']})"] = values
    else:
      rows[_run_name(d)] = values
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
      with open(path) as f:
        values = json.load(f)
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
      out[_run_name(d)] = [(int(e), float(t)) for e, t in values]
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m mixmo_tf.tables", description=__doc__)
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
  parser.add_argument("--members", action="store_true", help="Add every member's Top-1.")
  parser.add_argument("--timing", action="store_true", help="Add train minutes and images/s.")
  parser.add_argument("--curves", metavar="PNG", help="Write the test Top-1 per epoch plot here.")
  parser.add_argument("--best_on_test", action="store_true",
                      help="Show each run's epoch of best test Top-1 (selected on the test set, as "
                           "the official README's numbers) instead of its last epoch.")
  parser.add_argument("--ood", action="store_true",
                      help="Add a table of OOD detection: one row per (run, set, score).")
  args = parser.parse_args(argv)
  print(table(args.run_dirs, args.members, args.timing, args.best_on_test), end="")
  if args.ood:
    found = {_run_name(d): load_run_ood(d) for d in args.run_dirs}
    found = {run: values for run, values in found.items() if values}
    if not found:
      raise SystemExit("--ood: no run holds OOD results (metrics.json, results.json or "
                       "ensemble_results.json with an 'ood' section).")
    print()
    print(ood_table(found), end="")
  if args.curves:
    from mixmo_tf import plots
    found = curves(args.run_dirs)
    if not found:
      raise SystemExit("--curves: no run recorded test_top1_per_epoch (results.json).")
    plots.learning_curves(found, args.curves)


if __name__ == "__main__":
  main()

"""`python -m mixmo_tf.tables RUN_DIR ...`: many runs' metrics -> one Markdown table (Table 1 layout).

Reads each run's metrics.json (written by mixmo_tf.evaluate) or, failing that, its results.json
(written by the driver) or ensemble_results.json (baselines/ensemble.py); rows are named after the
run directories. `--members` adds every member's Top-1, `--timing` the train time and images/s,
`--curves=PNG` plots the test Top-1 per epoch of every run that recorded it.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence, Tuple

from mixmo_tf.evaluate import TABLE_COLUMNS, TIMING_COLUMNS, markdown_table

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


def table(run_dirs: Sequence[str], members: bool = False, timing: bool = False) -> str:
  rows = {_run_name(d): dict(load_run_metrics(d)) for d in run_dirs}
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
  args = parser.parse_args(argv)
  print(table(args.run_dirs, args.members, args.timing), end="")
  if args.curves:
    from mixmo_tf import plots
    found = curves(args.run_dirs)
    if not found:
      raise SystemExit("--curves: no run recorded test_top1_per_epoch (results.json).")
    plots.learning_curves(found, args.curves)


if __name__ == "__main__":
  main()

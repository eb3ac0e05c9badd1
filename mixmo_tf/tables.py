"""`python -m mixmo_tf.tables RUN_DIR ...`: many runs' metrics -> one Markdown table (Table 1 layout).

Reads each run's metrics.json (written by mixmo_tf.evaluate) or, failing that, its results.json
(written by the driver) or ensemble_results.json (baselines/ensemble.py); rows are named after the
run directories. `--members` adds every member's Top-1, `--timing` the train time and images/s,
`--curves=PNG` plots the test Top-1 per epoch of every run that recorded it, `--ood` adds a second
table: one row per (run, OOD set, score) with AUROC / AUPR-in / AUPR-out / FPR@95, so that MixMo,
vanilla and deep-ensemble runs scored on the same sets compare on one table (docs/method.md §17).
The tables themselves: `mixmo_tf.evaluation.tables`.
"""

from __future__ import annotations

import argparse
import sys

from mixmo_tf.evaluation import tables


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmo_tf.tables", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
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
  try:
    print(tables.table(args.run_dirs, args.members, args.timing, args.best_on_test), end="")
    if args.ood:
      found = {tables.run_name(d): tables.load_run_ood(d) for d in args.run_dirs}
      found = {run: values for run, values in found.items() if values}
      if not found:
        raise ValueError("--ood: no run holds OOD results (metrics.json, results.json or "
                         "ensemble_results.json with an 'ood' section).")
      print()
      print(tables.ood_table(found), end="")
    if args.curves:
      from mixmo_tf.evaluation import plots
      found = tables.curves(args.run_dirs)
      if not found:
        raise ValueError("--curves: no run recorded test_top1_per_epoch (results.json).")
      plots.learning_curves(found, args.curves)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""`python -m mixmo_tf.tables RUN_DIR ...`: many runs' metrics -> one Markdown table (Table 1 layout).

Reads each run's metrics.json (written by mixmo_tf.evaluate) or, failing that, its results.json
(written by the driver) or ensemble_results.json (baselines/ensemble.py); rows are named after the
run directories.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, Sequence

from mixmo_tf.evaluate import markdown_table

SOURCES = ("metrics.json", "results.json", "ensemble_results.json")


def load_run_metrics(run_dir: str) -> Dict:
  for name in SOURCES:
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      with open(path) as f:
        values = json.load(f)
      return values["ensemble"] if name == "ensemble_results.json" else values
  raise ValueError(f"{run_dir!r} holds none of {', '.join(SOURCES)}.")


def table(run_dirs: Sequence[str]) -> str:
  rows = {os.path.basename(os.path.normpath(d)): load_run_metrics(d) for d in run_dirs}
  return markdown_table(rows)


def main(argv=None):
  run_dirs = list(sys.argv[1:] if argv is None else argv)
  if not run_dirs:
    raise SystemExit("usage: python -m mixmo_tf.tables RUN_DIR [RUN_DIR ...]")
  sys.stdout.write(table(run_dirs))


if __name__ == "__main__":
  main()

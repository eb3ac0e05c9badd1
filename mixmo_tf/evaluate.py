"""`python -m mixmo_tf.evaluate`: test metrics, corruption robustness, OOD detection and plots.

Accepts a run's output_dir (its `model.keras`, or else its newest checkpoint), a `.keras` file in
one, or a SavedModel exported by `mixmo_tf.export`. Writes `metrics.json` and `metrics_row.md` (a
row in the layout of the paper's Table 1) next to the model, or in --output_dir.
`--ood=NAME[,NAME...]` scores the test set against out-of-distribution sets (folder:PATH on every
backend, TFDS names where TensorFlow is importable; docs/method.md §17) into metrics.json's "ood"
and `ood_table.md`. Runs on every Keras backend; the work is `mixmo_tf.evaluation.runs`.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from mixmo_tf import commands
from mixmo_tf.data import ood_sets
from mixmo_tf.evaluation import ood, runs, tables



def define_flags(flag_values) -> None:
  """The command's flags, on `flag_values` (absl's FLAGS when run as a module)."""
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("output_dir", "", "Where to write metrics.json (default: beside the model).",
                      **kw)
  flags.DEFINE_enum("ensemble", "", ["", "logits", "probs"], "Override the run's ensemble mode.",
                    **kw)
  flags.DEFINE_bool("plots", False, "Write PNG plots (reliability, stem filters, active filters; "
                    "with --ood, OOD score histograms and ROC curves).", **kw)
  flags.DEFINE_string("data_dir", "", "Override the run's data_dir (e.g. on another machine).",
                      **kw)
  flags.DEFINE_enum("corruptions", "", ["", "none", "cifar10_c", "cifar100_c"],
                    "Also evaluate on corrupted test sets (default: the run's --corruptions).",
                    **kw)
  flags.DEFINE_string("corruptions_dir", "", "The released CIFAR-10-C / CIFAR-100-C .npy folder, "
                      "or the TFDS data_dir of cifar10_corrupted.", **kw)
  flags.DEFINE_list("ood", [], "Out-of-distribution sets scored against the test set "
                    "(docs/method.md §17): folder:PATH (any image tree, PATH/test if present) or "
                    "TFDS names (cifar10, cifar100, svhn_cropped; test split).", **kw)
  flags.DEFINE_string("ood_data_dir", "", "TFDS data_dir of the --ood sets (default: the run's "
                      "data_dir for cifar10 / cifar100 runs, else TFDS's default).", **kw)
  flags.DEFINE_bool("allow_running", False, "Read a run that is still training (its files may "
                    "change while they are read).", **kw)


def main(argv, flag_values) -> None:
  """Evaluates every path of `argv[1:]` and prints its Table 1 row (and OOD table)."""
  values = flag_values
  paths = argv[1:]
  if not paths:
    raise ValueError("usage: python -m mixmo_tf.evaluate RUN_DIR|MODEL.keras|SAVED_MODEL ...")
  names = ood_sets.check_names(values.ood)
  for path in paths:
    results = runs.evaluate_run(path, values.output_dir or None, values.ensemble or None,
                                values.plots, values.data_dir or None, values.corruptions or None,
                                values.corruptions_dir or None, values.allow_running, names,
                                values.ood_data_dir or None)
    print(tables.markdown_row(os.path.basename(os.path.normpath(path)), results))
    if "ood" in results:
      print(ood.markdown_table(results["ood"]), end="")
  logging.flush()


if __name__ == "__main__":
  commands.run(sys.modules[__name__])

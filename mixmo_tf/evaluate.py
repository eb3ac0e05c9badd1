"""`python -m mixmo_tf.evaluate`: test metrics, corruption robustness and plots of a trained model.

Accepts a run's output_dir (its `model.keras`, or else its latest checkpoint), a `.keras` file, or a
SavedModel exported by `mixmo_tf.export`. Writes `metrics.json` and `metrics_row.md` (a row in the
layout of the paper's Table 1) next to the model, or in --output_dir.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from mixmo_tf import data as data_lib
from mixmo_tf import metrics
from mixmo_tf.predict import load_predictor, predict_dataset, run_folder
from mixmo_tf.run_lock import check_not_running

TABLE_COLUMNS = (("Top-1", "top1", 100, 2), ("Top-5", "top5", 100, 2), ("NLL", "nll", 1, 3),
                 ("NLL_c", "nll_c", 1, 3), ("ECE", "ece", 100, 2), ("Members Top-1",
                                                                   "top1_members_mean", 100, 2),
                 ("d_re", "diversity_dre", 1, 3))


def corruption_results(predictor, kind: str, directory: str = "", mode: str = "logits") -> Dict:
  """Top-1 / Top-5 / uncalibrated NLL pooled over every corruption and severity (docs/method.md §10.4)."""
  from mixmo_tf import corruptions
  if kind == "cifar10_c":
    datasets = corruptions.cifar10_c_datasets(directory or None)
  elif kind == "cifar100_c":
    datasets = corruptions.cifar100_c_datasets(directory)
  else:
    raise ValueError(f"corruptions must be cifar10_c or cifar100_c, got {kind!r}.")
  return corruptions.evaluate_corruptions(predictor, datasets, mode)


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


def evaluate_path(path: str, output_dir: Optional[str] = None, ensemble: Optional[str] = None,
                  plots: bool = False, data_dir: Optional[str] = None,
                  corruptions: Optional[str] = None, corruptions_dir: Optional[str] = None,
                  allow_running: bool = False) -> Dict:
  """Evaluates a model on its run's test set; writes metrics.json and metrics_row.md.

  `corruptions` ('cifar10_c' / 'cifar100_c', default: the run's --corruptions) adds the pooled
  corruption metrics. A run still training is refused unless `allow_running`.
  """
  from mixmo_tf.config import Config
  check_not_running(run_folder(path), allow_running)
  predictor, info, config = load_predictor(path)
  if config is None:
    raise ValueError(f"No config.json beside {path!r}: cannot tell which test set to use.")
  if data_dir:
    config = dict(config, data_dir=data_dir)
  if corruptions:
    config = dict(config, corruptions=corruptions, corruptions_dir=corruptions_dir or "")
  cfg = Config.from_dict(config)
  _, test, data_info = data_lib.load(cfg)
  logits, labels = predict_dataset(predictor, test)
  mode = ensemble or cfg.ensemble
  results = metrics.evaluate_logits(logits, labels, mode)
  out = output_dir or (path if os.path.isdir(path) else os.path.dirname(path))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  name = os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path)))
  with open(os.path.join(out, "metrics_row.md"), "w") as f:
    f.write(markdown_table({name: results}))
  if cfg.corruptions != "none":
    results["corruptions"] = corruption_results(predictor, cfg.corruptions, cfg.corruptions_dir,
                                                mode)
  if plots:
    from mixmo_tf import plots as plots_lib
    plots_lib.write_all(out, logits, labels, mode, predictor.model)
  return results


def ensemble_runs(run_dirs, combine: str = "logits", data_dir: Optional[str] = None) -> Dict:
  """Evaluates the average of N trained runs (deep ensembles; N-ensembles of MixMo, Sec. 4.6).

  All N x M member logits are pooled and combined like one run's members: the softmax of their mean
  logit ('logits', docs/method.md §11's natural choice) or their mean probability ('probs', as
  uncertainty-baselines' deep ensembles). Runs must share the test set.
  """
  from mixmo_tf.config import Config
  all_logits, labels, per_run = [], None, {}
  for run_dir in run_dirs:
    predictor, _, config = load_predictor(run_dir)
    cfg = Config.from_dict(dict(config, data_dir=data_dir) if data_dir else config)
    _, test, _ = data_lib.load(cfg)
    logits, run_labels = predict_dataset(predictor, test)
    if labels is not None and not np.array_equal(labels, run_labels):
      raise ValueError(f"{run_dir} was evaluated on another test set than {run_dirs[0]}.")
    labels = run_labels
    all_logits.append(logits)
    per_run[os.path.basename(os.path.normpath(run_dir))] = metrics.evaluate_logits(
        logits, labels, combine)
  results = metrics.evaluate_logits(np.concatenate(all_logits, axis=1), labels, combine)
  results["num_runs"] = len(run_dirs)
  return {"ensemble": results, "runs": per_run}


def main(argv):
  from absl import flags
  paths = argv[1:]
  if not paths:
    raise SystemExit("usage: python -m mixmo_tf.evaluate RUN_DIR|MODEL.keras|SAVED_MODEL ...")
  values = flags.FLAGS
  for path in paths:
    results = evaluate_path(path, values.output_dir or None, values.ensemble or None,
                            values.plots, values.data_dir or None, values.corruptions or None,
                            values.corruptions_dir or None, values.allow_running)
    print(markdown_row(os.path.basename(os.path.normpath(path)), results))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("output_dir", "", "Where to write metrics.json (default: beside the model).")
  flags.DEFINE_enum("ensemble", "", ["", "logits", "probs"], "Override the run's ensemble mode.")
  flags.DEFINE_bool("plots", False, "Write PNG plots (reliability, stem filters, active filters).")
  flags.DEFINE_string("data_dir", "", "Override the run's data_dir (e.g. on another machine).")
  flags.DEFINE_enum("corruptions", "", ["", "none", "cifar10_c", "cifar100_c"],
                    "Also evaluate on corrupted test sets (default: the run's --corruptions).")
  flags.DEFINE_string("corruptions_dir", "", "CIFAR-100-C .npy folder or TFDS data_dir.")
  flags.DEFINE_bool("allow_running", False, "Read a run that is still training (its files may "
                    "change while they are read).")
  app.run(main)

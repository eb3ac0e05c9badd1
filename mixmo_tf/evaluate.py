"""`python -m mixmo_tf.evaluate`: test metrics, corruption robustness and plots of a trained model.

Accepts a run's output_dir (its `model.keras`, or else its latest checkpoint), a `.keras` file, or a
SavedModel exported by `mixmo_tf.export`. Writes `metrics.json` and `metrics_row.md` (a row in the
layout of the paper's Table 1) next to the model, or in --output_dir. `--ood=NAME[,NAME...]` scores
the test set against out-of-distribution sets (TFDS names or folder:PATH, docs/method.md §17) into
metrics.json's "ood" and `ood_table.md`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from mixmo_tf import data as data_lib
from mixmo_tf import metrics
from mixmo_tf import ood as ood_lib
from mixmo_tf import ood_data
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


OOD_TABLE = "ood_table.md"


def ood_plots(out_dir: str, in_logits, out_logits: Dict[str, np.ndarray],
              mode: str = "logits") -> List[str]:
  """Per OOD set: `ood_<set>_hist_<score>.png` (in vs out, one per score), `ood_<set>_roc.png`."""
  from mixmo_tf import plots as plots_lib
  stems = ood_data.file_stems(list(out_logits))
  in_scores = ood_lib.uncertainty_scores(in_logits, mode)
  written = []
  for name, logits in out_logits.items():
    out_scores = ood_lib.uncertainty_scores(logits, mode)
    prefix = os.path.join(out_dir, f"ood_{stems[name]}")
    for score in in_scores:
      written.append(plots_lib.ood_score_histograms(
          in_scores[score], out_scores[score], f"{prefix}_hist_{score}.png",
          f"{score}: test set vs {name}"))
    written.append(plots_lib.ood_roc_curves(
        {score: (in_scores[score], out_scores[score]) for score in in_scores},
        f"{prefix}_roc.png", f"OOD detection: test set vs {name}"))
  return written


def write_ood_table(out_dir: str, results: Dict) -> str:
  """`ood_table.md` (ood.markdown_table: one row per (set, score), metrics in percent)."""
  path = os.path.join(out_dir, OOD_TABLE)
  with open(path, "w") as f:
    f.write(ood_lib.markdown_table(results))
  return path


def _write_metrics(out: str, results: Dict) -> None:
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)


def evaluate_path(path: str, output_dir: Optional[str] = None, ensemble: Optional[str] = None,
                  plots: bool = False, data_dir: Optional[str] = None,
                  corruptions: Optional[str] = None, corruptions_dir: Optional[str] = None,
                  allow_running: bool = False, ood: Sequence[str] = (),
                  ood_data_dir: Optional[str] = None) -> Dict:
  """Evaluates a model on its run's test set; writes metrics.json and metrics_row.md.

  `corruptions` ('cifar10_c' / 'cifar100_c', default: the run's --corruptions) adds the pooled
  corruption metrics. `ood` (TFDS names or folder:PATH; TFDS sets read from `ood_data_dir`, else
  ood_data.tfds_data_dir of the run) adds results["ood"][set][score][metric], `ood_table.md` and,
  with `plots`, score histograms and ROC curves (docs/method.md §17). A run still training is
  refused unless `allow_running`.
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
  # OOD sets are read (folders decoded) before any prediction: a bad set fails fast.
  ood_sets = ood_data.ood_datasets(ood, ood_data_dir or ood_data.tfds_data_dir(cfg),
                                   data_info.image_shape)
  logits, labels = predict_dataset(predictor, test)
  mode = ensemble or cfg.ensemble
  results = metrics.evaluate_logits(logits, labels, mode)
  out = output_dir or (path if os.path.isdir(path) else os.path.dirname(path))
  os.makedirs(out, exist_ok=True)
  _write_metrics(out, results)
  name = os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path)))
  with open(os.path.join(out, "metrics_row.md"), "w") as f:
    f.write(markdown_table({name: results}))
  if cfg.corruptions != "none":
    results["corruptions"] = corruption_results(predictor, cfg.corruptions, cfg.corruptions_dir,
                                                mode)
  if ood_sets:
    out_logits = ood_data.ood_logits(predictor, ood_sets)
    results["ood"] = {set_name: ood_lib.evaluate_ood(logits, out_logits[set_name], mode)
                      for set_name in ood_sets}
    write_ood_table(out, results["ood"])
    if plots:
      ood_plots(out, logits, out_logits, mode)
  if "corruptions" in results or "ood" in results:
    _write_metrics(out, results)  # Again, with the extra sections.
  if plots:
    from mixmo_tf import plots as plots_lib
    plots_lib.write_all(out, logits, labels, mode, predictor.model)
  return results


def ensemble_runs(run_dirs, combine: str = "logits", data_dir: Optional[str] = None,
                  ood: Sequence[str] = (), ood_data_dir: Optional[str] = None) -> Dict:
  """Evaluates the average of N trained runs (deep ensembles; N-ensembles of MixMo, Sec. 4.6).

  All N x M member logits are pooled and combined like one run's members: the softmax of their mean
  logit ('logits', docs/method.md §11's natural choice) or their mean probability ('probs', as
  uncertainty-baselines' deep ensembles). Runs must share the test set. `ood` scores the pooled
  N x M member logits of the test set against each OOD set's, in results["ensemble"]["ood"]
  (docs/method.md §17; `ood_data_dir` as in evaluate_path, from the first run's config).
  """
  from mixmo_tf.config import Config
  all_logits, labels, per_run = [], None, {}
  ood_sets, ood_pooled = None, {}
  for run_dir in run_dirs:
    predictor, _, config = load_predictor(run_dir)
    cfg = Config.from_dict(dict(config, data_dir=data_dir) if data_dir else config)
    _, test, info = data_lib.load(cfg)
    if ood_sets is None:  # Read once, before any prediction, and shared by the N runs.
      ood_sets = ood_data.ood_datasets(ood, ood_data_dir or ood_data.tfds_data_dir(cfg),
                                       info.image_shape)
    for name, out_logits in ood_data.ood_logits(predictor, ood_sets).items():
      ood_pooled.setdefault(name, []).append(out_logits)
    logits, run_labels = predict_dataset(predictor, test)
    if labels is not None and not np.array_equal(labels, run_labels):
      raise ValueError(f"{run_dir} was evaluated on another test set than {run_dirs[0]}.")
    labels = run_labels
    all_logits.append(logits)
    per_run[os.path.basename(os.path.normpath(run_dir))] = metrics.evaluate_logits(
        logits, labels, combine)
  pooled = np.concatenate(all_logits, axis=1)
  results = metrics.evaluate_logits(pooled, labels, combine)
  results["num_runs"] = len(run_dirs)
  if ood_pooled:
    results["ood"] = {name: ood_lib.evaluate_ood(pooled, np.concatenate(parts, axis=1), combine)
                      for name, parts in ood_pooled.items()}
  return {"ensemble": results, "runs": per_run}


def main(argv):
  from mixmo_tf import runtime
  runtime.use_absl_handler_for_tensorflow()
  runtime.log_environment_once()
  from absl import flags
  paths = argv[1:]
  if not paths:
    raise SystemExit("usage: python -m mixmo_tf.evaluate RUN_DIR|MODEL.keras|SAVED_MODEL ...")
  values = flags.FLAGS
  for path in paths:
    results = evaluate_path(path, values.output_dir or None, values.ensemble or None,
                            values.plots, values.data_dir or None, values.corruptions or None,
                            values.corruptions_dir or None, values.allow_running,
                            ood_data.check_names(values.ood), values.ood_data_dir or None)
    print(markdown_row(os.path.basename(os.path.normpath(path)), results))
    if "ood" in results:
      print(ood_lib.markdown_table(results["ood"]), end="")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("output_dir", "", "Where to write metrics.json (default: beside the model).")
  flags.DEFINE_enum("ensemble", "", ["", "logits", "probs"], "Override the run's ensemble mode.")
  flags.DEFINE_bool("plots", False, "Write PNG plots (reliability, stem filters, active filters; "
                    "with --ood, OOD score histograms and ROC curves).")
  flags.DEFINE_string("data_dir", "", "Override the run's data_dir (e.g. on another machine).")
  flags.DEFINE_enum("corruptions", "", ["", "none", "cifar10_c", "cifar100_c"],
                    "Also evaluate on corrupted test sets (default: the run's --corruptions).")
  flags.DEFINE_string("corruptions_dir", "", "CIFAR-100-C .npy folder or TFDS data_dir.")
  flags.DEFINE_list("ood", [], "Out-of-distribution sets scored against the test set "
                    "(docs/method.md §17): TFDS names (cifar10, cifar100, svhn_cropped; test "
                    "split) or folder:PATH (any image tree, PATH/test if present).")
  flags.DEFINE_string("ood_data_dir", "", "TFDS data_dir of the --ood sets (default: the run's "
                      "data_dir for cifar10 / cifar100 runs, else TFDS's default).")
  flags.DEFINE_bool("allow_running", False, "Read a run that is still training (its files may "
                    "change while they are read).")
  app.run(main)

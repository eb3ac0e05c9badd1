"""Evaluating trained runs on every backend: one run (`evaluate_run`), or N pooled (`ensemble_runs`).

What `python -m mixmo_tf.evaluate` and `baselines.ensemble` do, as library functions: read the
run folder, its test set (`data.datasets`), optional corrupted and OOD sets, predict through the one
path (`evaluation.predict`) and compute the paper's metrics (`evaluation.metrics`, `.ood`,
`.corruptions`), writing metrics.json, metrics_row.md, ood_table.md and the PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import logging

from mixmo_tf.data import datasets, ood_sets
from mixmo_tf.evaluation import metrics, ood, tables
from mixmo_tf.evaluation.corruptions import corruption_results
from mixmo_tf.evaluation.predict import load_predictor, predict_batches

OOD_TABLE = "ood_table.md"


def ood_logits(predictor, sets: Dict[str, datasets.InMemory]) -> Dict[str, np.ndarray]:
  """{name: member logits [N, M, K]} of each OOD set."""
  return {name: predict_batches(predictor, examples, name=f"OOD set {name!r}")[0]
          for name, examples in sets.items()}


def ood_plots(out_dir: str, in_logits, out_logits: Dict[str, np.ndarray],
              mode: str = "logits") -> List[str]:
  """Per OOD set: `ood_<set>_hist_<score>.png` (in vs out, one per score), `ood_<set>_roc.png`."""
  from mixmo_tf.evaluation import plots
  stems = ood_sets.file_stems(list(out_logits))
  in_scores = ood.uncertainty_scores(in_logits, mode)
  written = []
  for name, logits in out_logits.items():
    out_scores = ood.uncertainty_scores(logits, mode)
    prefix = os.path.join(out_dir, f"ood_{stems[name]}")
    for score in in_scores:
      written.append(plots.ood_score_histograms(
          in_scores[score], out_scores[score], f"{prefix}_hist_{score}.png",
          f"{score}: test set vs {name}"))
    written.append(plots.ood_roc_curves(
        {score: (in_scores[score], out_scores[score]) for score in in_scores},
        f"{prefix}_roc.png", f"OOD detection: test set vs {name}"))
  return written


def write_ood_table(out_dir: str, results: Dict) -> str:
  """`ood_table.md` (ood.markdown_table: one row per (set, score), metrics in percent)."""
  path = os.path.join(out_dir, OOD_TABLE)
  with open(path, "w") as f:
    f.write(ood.markdown_table(results))
  return path


def _write_metrics(out: str, results: Dict) -> None:
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)


def test_set_config(folder, data_dir: Optional[str] = None):
  """The run's Config, with `data_dir` overridden (e.g. the data on another machine)."""
  config = folder.read_config()
  return dataclasses.replace(config, data_dir=data_dir) if data_dir else config


def evaluate_run(path: str, output_dir: Optional[str] = None, ensemble: Optional[str] = None,
                 plots: bool = False, data_dir: Optional[str] = None,
                 corruptions: Optional[str] = None, corruptions_dir: Optional[str] = None,
                 allow_running: bool = False, ood_names: Sequence[str] = (),
                 ood_data_dir: Optional[str] = None) -> Dict:
  """Evaluates a run folder (its model.keras or newest checkpoint), a .keras file in one or a
  SavedModel in one on the run's test set; writes metrics.json and metrics_row.md there (or in
  `output_dir`).

  `corruptions` ('cifar10_c' / 'cifar100_c', default: the run's --corruptions) adds the pooled
  corruption metrics. `ood_names` (folder:PATH or TFDS names; TFDS sets read from `ood_data_dir`,
  else `ood_sets.tfds_data_dir` of the run) adds results["ood"][set][score][metric],
  `ood_table.md` and, with `plots`, score histograms and ROC curves (docs/method.md §17). A run
  still training is refused unless `allow_running`.
  """
  predictor, folder = load_predictor(path, allow_running)
  unfinished = folder.missing_artifacts() if not folder.is_complete() else []
  if unfinished:  # Evaluated all the same (its newest checkpoint, say), and said so.
    logging.warning("%s is unfinished (%s missing): evaluating what it holds now. Rerun its "
                    "training command to complete it.", folder.path, ", ".join(unfinished))
  config = test_set_config(folder, data_dir)
  if corruptions:
    config = dataclasses.replace(config, corruptions=corruptions,
                                 corruptions_dir=corruptions_dir or "")
  data = datasets.load(config)
  # OOD sets are read (folders decoded) before any prediction: a bad set fails fast.
  sets = ood_sets.ood_sets(ood_names, ood_data_dir or ood_sets.tfds_data_dir(config),
                           data.info.image_shape)
  logits, labels = predict_batches(predictor, data.test, name="test set")
  mode = ensemble or config.ensemble
  results = metrics.evaluate_logits(logits, labels, mode)
  if unfinished:
    results["unfinished"] = unfinished  # `tables` labels the row so.
  out = output_dir or (path if os.path.isdir(path) and not _is_saved_model(path)
                       else os.path.dirname(os.path.normpath(path)))
  os.makedirs(out, exist_ok=True)
  name = os.path.basename(os.path.normpath(folder.path))
  if config.corruptions != "none":
    results["corruptions"] = corruption_results(predictor, config.corruptions,
                                                config.corruptions_dir, mode)
  if sets:
    out_logits = ood_logits(predictor, sets)
    results["ood"] = {set_name: ood.evaluate_ood(logits, out_logits[set_name], mode)
                      for set_name in sets}
    write_ood_table(out, results["ood"])
    if plots:
      ood_plots(out, logits, out_logits, mode)
  _write_metrics(out, results)
  with open(os.path.join(out, "metrics_row.md"), "w") as f:
    f.write(tables.markdown_table({name: results}))
  if plots:
    from mixmo_tf.evaluation import plots as plots_lib
    plots_lib.write_all(out, logits, labels, mode, predictor.network)
  return results


def _is_saved_model(path: str) -> bool:
  from mixmo_tf.deploy import is_saved_model
  return is_saved_model(path)


def ensemble_runs(run_dirs: Sequence[str], combine: str = "logits",
                  data_dir: Optional[str] = None, ood_names: Sequence[str] = (),
                  ood_data_dir: Optional[str] = None) -> Dict:
  """Evaluates the average of N trained runs (deep ensembles; N-ensembles of MixMo, Sec. 4.6).

  All N x M member logits are pooled and combined like one run's members: the softmax of their
  mean logit ('logits', docs/method.md §11's natural choice) or their mean probability ('probs', as
  uncertainty-baselines' deep ensembles). Runs must share the test set. `ood_names` scores the
  pooled member logits of the test set against each OOD set's, in results["ensemble"]["ood"]
  (docs/method.md §17; `ood_data_dir` as in evaluate_run, from the first run's config).
  """
  all_logits, labels, per_run = [], None, {}
  sets, ood_pooled = None, {}
  for run_dir in run_dirs:
    predictor, folder = load_predictor(run_dir)
    config = test_set_config(folder, data_dir)
    data = datasets.load(config)
    if sets is None:  # Read once, before any prediction, and shared by the N runs.
      sets = ood_sets.ood_sets(ood_names, ood_data_dir or ood_sets.tfds_data_dir(config),
                               data.info.image_shape)
    for name, out_logits in ood_logits(predictor, sets).items():
      ood_pooled.setdefault(name, []).append(out_logits)
    logits, run_labels = predict_batches(predictor, data.test, name="test set")
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
    results["ood"] = {name: ood.evaluate_ood(pooled, np.concatenate(parts, axis=1), combine)
                      for name, parts in ood_pooled.items()}
  return {"ensemble": results, "runs": per_run}

"""`python -m mixmo_tf.evaluate`: test metrics, corruption robustness and plots of a trained model.

Accepts a run's output_dir (its `model.keras`, or else its latest checkpoint), a `.keras` file, or a
SavedModel exported by `mixmo_tf.export`. Writes `metrics.json` and `metrics_row.md` (a row in the
layout of the paper's Table 1) next to the model, or in --output_dir.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from mixmo_tf import data as data_lib
from mixmo_tf import metrics

TABLE_COLUMNS = (("Top-1", "top1", 100, 2), ("Top-5", "top5", 100, 2), ("NLL", "nll", 1, 3),
                 ("NLL_c", "nll_c", 1, 3), ("ECE", "ece", 100, 2), ("Members Top-1",
                                                                   "top1_members_mean", 100, 2),
                 ("d_re", "diversity_dre", 1, 3))


class Predictor:
  """Member logits [N, M, K] for uint8 images, from a Keras model or a SavedModel."""

  def __init__(self, predict_fn: Callable, num_members: int, model=None):
    self._predict = predict_fn
    self.num_members = num_members
    self.model = model

  @classmethod
  def from_keras(cls, model, info):
    @tf.function
    def predict(images):
      x = data_lib.preprocess_eval(images, info)
      return tf.cast(model([x] * model.num_members, training=False), tf.float32)
    return cls(predict, model.num_members, model)

  @classmethod
  def from_saved_model(cls, path):
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]

    def predict(images):
      # Member probabilities -> log-probabilities: softmax(log p) = p, so every metric that uses
      # member softmaxes or their mean logit is unchanged up to a per-member constant shift.
      return tf.math.log(serve(images=images)["member_probs"] + 1e-30)
    probe = serve.structured_outputs["member_probs"].shape
    return cls(predict, int(probe[1]))

  def __call__(self, images):
    return self._predict(images)


def predict_dataset(predictor: Predictor, dataset: tf.data.Dataset, batch_size: int = 500):
  """Runs `predictor` over (uint8 image, label) pairs; returns (logits [N, M, K], labels [N])."""
  logits, labels = [], []
  for images, y in dataset.batch(batch_size).prefetch(data_lib.AUTOTUNE):
    logits.append(np.asarray(predictor(images)))
    labels.append(y.numpy())
  return np.concatenate(logits), np.concatenate(labels)


def load_predictor(path: str):
  """(Predictor, DataInfo or None, Config dict or None) from a run dir, .keras or SavedModel."""
  import keras
  import mixmo_tf  # noqa: F401  (registers the custom layers for safe-mode loading)
  from mixmo_tf.export import load_data_info
  is_saved_model = os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb"))
  # A run directory holds config.json and data_info.json; a model file or SavedModel sits in one.
  run_dir = path if os.path.isdir(path) and not is_saved_model else os.path.dirname(
      os.path.normpath(path))
  info_path = os.path.join(run_dir, "data_info.json")
  info = load_data_info(info_path) if os.path.exists(info_path) else None
  config_path = os.path.join(run_dir, "config.json")
  config = json.load(open(config_path)) if os.path.exists(config_path) else None
  if is_saved_model:
    return Predictor.from_saved_model(path), info, config
  if path.endswith(".keras"):
    model = keras.models.load_model(path, safe_mode=True)
  elif os.path.exists(os.path.join(path, "model.keras")):
    model = keras.models.load_model(os.path.join(path, "model.keras"), safe_mode=True)
  elif config is not None and tf.train.latest_checkpoint(os.path.join(path, "checkpoints")):
    model = _model_from_checkpoint(path, config, info)
  else:
    raise ValueError(f"{path!r} is neither a run directory (model.keras or checkpoints/), a .keras "
                     "file nor a SavedModel.")
  if info is None:
    raise ValueError(f"{info_path} is missing: cannot normalise the test images.")
  return Predictor.from_keras(model, info), info, config


def _model_from_checkpoint(run_dir, config, info):
  from mixmo_tf.models import build_model
  kwargs = dict(num_members=config["num_members"], num_classes=info.num_classes,
                image_shape=info.image_shape, width=config["width"])
  if config["model"] == "wide_resnet":
    kwargs["depth"] = config["depth"]
  model = build_model(config["model"], **kwargs)
  ckpt = tf.train.Checkpoint(model=model)
  ckpt.restore(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))).expect_partial()
  return model


def corruption_results(predictor, kind: str, directory: str = "", mode: str = "logits") -> Dict:
  """Top-1 / Top-5 / uncalibrated NLL pooled over every corruption and severity (REFERENCE 10.4)."""
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
                  corruptions: Optional[str] = None, corruptions_dir: Optional[str] = None) -> Dict:
  """Evaluates a model on its run's test set; writes metrics.json and metrics_row.md.

  `corruptions` ('cifar10_c' / 'cifar100_c', default: the run's --corruptions) adds the pooled
  corruption metrics.
  """
  from mixmo_tf.config import Config
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


def main(argv):
  from absl import flags
  paths = argv[1:]
  if not paths:
    raise SystemExit("usage: python -m mixmo_tf.evaluate RUN_DIR|MODEL.keras|SAVED_MODEL ...")
  values = flags.FLAGS
  for path in paths:
    results = evaluate_path(path, values.output_dir or None, values.ensemble or None,
                            values.plots, values.data_dir or None, values.corruptions or None,
                            values.corruptions_dir or None)
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
  app.run(main)


def ensemble_runs(run_dirs, combine: str = "logits", data_dir: Optional[str] = None) -> Dict:
  """Evaluates the average of N trained runs (deep ensembles; N-ensembles of MixMo, Sec. 4.6).

  All N x M member logits are pooled and combined like one run's members: the softmax of their mean
  logit ('logits', REFERENCE 11's natural choice) or their mean probability ('probs', as
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

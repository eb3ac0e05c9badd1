"""Everything after training works without TensorFlow, and agrees with what TensorFlow computes.

One JAX process (tests/scripts/jax_session.py, run once per test session by the `jax_session`
fixture of tests/conftest.py, with TensorFlow, TFP and TFDS unimportable and two forced host CPU
devices) does what a user of a GPU machine without
TensorFlow does, through the commands' `main`: the driver on two devices vs one, two short runs,
`evaluate` with plots, an OOD folder and a released-layout corrupted set, `baselines.ensemble`
over both runs, `tables`, `export` (refused in one line), the quickstart recipe, and two steps on a
member batch sampled here. This process (TensorFlow) then checks each result against its own
computation from the same files (docs/method.md §10, §17).
"""

import json

import numpy as np
import pytest

from mixmo_tf import commands, evaluate
from mixmo_tf.data import datasets
from mixmo_tf.data.corrupted import RELEASED_CORRUPTIONS as CORRUPTIONS
from mixmo_tf.evaluation import metrics
from mixmo_tf.evaluation.predict import Predictor, load_network, predict_batches
from tests.helpers import assert_non_blank_png
from tests.test_keras_trainer import CROSS_BACKEND_TOLERANCE, given_batch_steps


def test_the_session_ran_every_step_without_tensorflow(jax_session):
  log = jax_session.log
  for name in ("data parallel driver run equals one device", "two runs trained",
               "evaluate with plots, ood, corruptions", "baselines.ensemble over both runs",
               "tables", "export refused without tensorflow", "quickstart recipe trained",
               "given-batch steps written",
               "models saved under TensorFlow loaded, trained and saved under JAX",
               "wrapped networks trained"):
    assert f"OK {name}" in log.splitlines(), (name, log[-3000:])


def test_data_parallel_on_two_devices_equals_one_device(jax_session):
  report = json.loads((jax_session.out / "report.json").read_text())
  print("JAX driver, 2 devices vs 1, 3 steps: max |weight difference|",
        report["data_parallel_max_difference"])
  assert report["data_parallel_max_difference"] <= 1e-5


def test_jax_probabilities_equal_tensorflows_from_the_same_model(jax_session):
  out = jax_session.out
  run = out / "ensemble" / "run_0"
  network = load_network(str(run / "model.keras"))
  digits = datasets.digits_dataset()
  logits, _ = predict_batches(Predictor.from_network(network, digits.info), digits.test)
  jax_logits = np.load(out / "test_logits.npy")
  for mode in ("logits", "probs"):
    np.testing.assert_allclose(metrics.ensemble_probs(jax_logits, mode),
                               metrics.ensemble_probs(logits, mode), atol=1e-4)
  np.testing.assert_allclose(metrics.softmax(jax_logits), metrics.softmax(logits), atol=1e-4)


def test_evaluate_metrics_ood_and_corruptions_agree_with_tensorflow(jax_session, tmp_path):
  out, data = jax_session.out, jax_session.data
  run = out / "ensemble" / "run_0"
  status = commands.call(evaluate, [str(run), f"--ood=folder:{data / 'ood'}",
                                    "--corruptions=cifar10_c",
                                    f"--corruptions_dir={data / 'corrupted'}",
                                    f"--output_dir={tmp_path}"])
  assert status == 0
  jax = json.loads((out / "eval" / "metrics.json").read_text())
  tf_ = json.loads((tmp_path / "metrics.json").read_text())
  n = jax["num_examples"]
  assert n == tf_["num_examples"] == 359
  for key in ("top1", "top5", "ece", "top1_member_0", "top1_member_1"):
    assert abs(jax[key] - tf_[key]) <= 1 / n, key
  assert abs(jax["nll"] - tf_["nll"]) <= 1e-3
  ood_name = f"folder:{data / 'ood'}"
  for score, values in tf_["ood"][ood_name].items():
    for metric in ("auroc", "fpr95"):
      assert abs(jax["ood"][ood_name][score][metric] - values[metric]) <= 1 / 12, (score, metric)
  assert jax["corruptions"]["num_examples"] == tf_["corruptions"]["num_examples"] == 19 * 30
  assert abs(jax["corruptions"]["top1"] - tf_["corruptions"]["top1"]) <= 1 / (19 * 30)
  assert set(jax["corruptions"]["per_corruption"]) == set(CORRUPTIONS)
  for name in ("reliability", "member_vs_ensemble", "stem_filters", "active_filters"):
    assert_non_blank_png(out / "eval" / f"{name}.png")
  stem = "folder_ood"
  assert_non_blank_png(out / "eval" / f"ood_{stem}_roc.png")


def test_ensemble_and_tables_without_tensorflow(jax_session):
  out = jax_session.out
  results = json.loads((out / "ensemble" / "ensemble_results.json").read_text())
  assert results["ensemble"]["num_runs"] == 2 and set(results["runs"]) == {"run_0", "run_1"}
  members = [json.loads((out / "ensemble" / f"run_{i}" / "results.json").read_text())
             for i in (0, 1)]
  for i, run in enumerate(members):  # The ensemble re-evaluates each run as it trained it.
    assert results["runs"][f"run_{i}"]["top1"] == pytest.approx(run["top1"], abs=1e-9)
  assert "ood" in results["ensemble"]
  table = (out / "tables.md").read_text()
  assert table.count("| run_0 |") == 1 and "| ensemble |" in table
  assert_non_blank_png(out / "curves.png")


def test_export_without_tensorflow_names_what_to_install(jax_session):
  report = json.loads((jax_session.out / "report.json").read_text())
  assert report["export_status"] == 1
  message = report["export_message"]
  assert message.startswith("error: ") and "pip install" in message and "tensorflow" in message
  assert len(message.splitlines()) == 1 and "Traceback" not in message


def test_quickstart_recipe_learns_on_jax(jax_session):
  report = json.loads((jax_session.out / "report.json").read_text())
  print("JAX quickstart recipe, 12 epochs: test Top-1", report["quickstart_top1"])
  assert report["quickstart_top1"] >= 0.90


def test_two_steps_on_one_member_batch_equal_tensorflows(jax_session):
  out, data, arrays = jax_session.out, jax_session.data, jax_session.arrays
  tf_weights = given_batch_steps(load_network(str(data / "step_model.keras")), arrays)
  with np.load(out / "jax_step_weights.npz") as saved:
    jax_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  initial = [np.asarray(w, np.float64) for w in load_network(
      str(data / "step_model.keras")).get_weights()]
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(tf_weights, initial))
  difference = max(float(np.max(np.abs(a - b))) for a, b in zip(tf_weights, jax_weights))
  print(f"2 steps on one member batch, JAX vs TensorFlow: max |weight difference| "
        f"{difference:.3g} (the steps moved weights by up to {moved:.3g})")
  assert moved > 1e-2 and difference <= CROSS_BACKEND_TOLERANCE, (difference, moved)

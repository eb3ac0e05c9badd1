"""Deep ensembles and N-ensembles of MixMo run end to end through the driver; the ensemble is the
softmax of the mean of all N x M pooled member logits (docs/method.md §11)."""

import json
from unittest import mock

import numpy as np
import pytest

from baselines import ensemble
from baselines.ensemble import run_ensemble
from mixmo_tf import commands, training
from mixmo_tf.data import datasets
from mixmo_tf.evaluation import runs as eval_runs
from mixmo_tf.evaluation.predict import load_predictor, predict_batches
from mixmo_tf.run_folder import RunFolder
from tests.helpers import tiny_config


def _error_line(err):
  """The one `error: ...` line a command printed on stderr, its last line (log lines may come
  before it)."""
  lines = err.strip().splitlines()
  assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
  return lines[-1]


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name,overrides", [("de", dict(num_members=1, batch_repetitions=1)),
                                            ("mixmo", {})])
def test_ensemble_of_runs_is_the_pooled_logit_mean(tmp_path, name, overrides):
  config = tiny_config(tmp_path / name, epochs=1, lr_decay_epochs=(), **overrides)
  results = run_ensemble(config, num_runs=2, combine="logits")
  ens, runs = results["ensemble"], results["runs"]
  assert ens["num_runs"] == 2 and set(runs) == {"run_0", "run_1"}
  assert sum(k.startswith("top1_member_") for k in ens) == 2 * config.num_members
  run_dirs = [str(tmp_path / name / f"run_{i}") for i in range(2)]
  # Seeds seed, seed + 1, each run complete in its own folder.
  assert [RunFolder.open(d).read_config().seed for d in run_dirs] == [7, 8]
  assert all(RunFolder(d).is_complete() for d in run_dirs)
  # Recompute the ensemble by hand from each run's own member logits.
  test = datasets.load(config).test
  pooled, labels = [], None
  for run_dir in run_dirs:
    predictor, _ = load_predictor(run_dir)
    logits, labels = predict_batches(predictor, test)
    pooled.append(logits)
  pooled = np.concatenate(pooled, axis=1).astype(np.float64)  # [N, 2M, K]
  assert pooled.shape[1] == 2 * config.num_members
  np.testing.assert_array_equal(labels, test.labels)
  probs = _softmax(pooled.mean(axis=1))
  assert ens["nll"] == pytest.approx(np.mean(-np.log(probs[np.arange(len(labels)), labels]
                                                     + 1e-12)), rel=1e-9)
  assert ens["top1"] == pytest.approx(np.mean(probs.argmax(1) == labels), abs=1e-12)
  assert runs["run_0"]["nll"] != runs["run_1"]["nll"]  # differently seeded runs differ
  saved = json.loads((tmp_path / name / "ensemble_results.json").read_text())
  assert saved["ensemble"]["top1"] == ens["top1"]
  table = (tmp_path / name / "ensemble_table.md").read_text().splitlines()
  assert len(table) == 5 and [row.split(" | ")[0] for row in table[2:]] == [
      "| run_0", "| run_1", "| ensemble of 2"]
  assert table[4].startswith(f"| ensemble of 2 | {100 * ens['top1']:.2f} |")
  # 'probs': the mean of the 2M members' probabilities.
  mean_probs = _softmax(pooled).mean(axis=1)
  by_probs = eval_runs.ensemble_runs(run_dirs, "probs")["ensemble"]
  assert by_probs["nll"] == pytest.approx(np.mean(-np.log(
      mean_probs[np.arange(len(labels)), labels] + 1e-12)), rel=1e-9)
  assert by_probs["top1"] == pytest.approx(np.mean(mean_probs.argmax(1) == labels), abs=1e-12)
  # Finished runs are never trained again: a second call only evaluates, to the same figures.
  with mock.patch.object(training, "run", lambda *a, **k: pytest.fail("a finished run trained")):
    again = run_ensemble(config, num_runs=2, combine="logits")
  assert again["ensemble"]["nll"] == pytest.approx(ens["nll"], rel=1e-6)


def test_ensemble_command_refuses_bad_counts_before_training(tmp_path, capsys):
  with mock.patch.object(training, "run", lambda *a, **k: pytest.fail("trained")):
    status = commands.call(ensemble, ["--num_runs=0", f"--output_dir={tmp_path / 'a'}"])
    assert status == 1
    assert _error_line(capsys.readouterr().err).startswith("error: --num_runs=0 is not valid")
    status = commands.call(ensemble, ["--num_runs=2", "--seed=2147483647",
                                      f"--output_dir={tmp_path / 'b'}"])
    assert status == 1 and _error_line(capsys.readouterr().err).startswith(
        "error: --seed=2147483647 with --num_runs=2: the last run's seed=2147483648 is not valid")
    assert commands.call(ensemble, ["--combine=median"]) == 2  # A flag error.
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

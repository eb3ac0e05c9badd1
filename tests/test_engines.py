"""One run loop over two engines (`mixmo_tf.training.loop`): the tf.distribute engine and the Keras
engine, both on TensorFlow, run the same configuration to the same history.json and results.json
schema and, since they share the data order, the seeds and the step's functions, the same weights.
"""

import json

import numpy as np
import pytest

from mixmo_tf import training
from mixmo_tf.evaluation.predict import load_network
from tests.helpers import tiny_config

# 256 training images, 16 unique per step: 16 steps per epoch; 3 epochs, evaluated at 2 and 3.
SETTINGS = dict(train_subset=256, epochs=3, lr_decay_epochs=(3,), eval_frequency=2,
                checkpoint_frequency=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("engines")
  results = {engine: training.run(tiny_config(out / engine, engine=engine, **SETTINGS))
             for engine in ("custom", "keras")}
  return out, results


def _schema(value):
  """The structure of a JSON value: dict keys with the schema of their values, list element
  schemas, else the type (int and float both count as numbers)."""
  if isinstance(value, dict):
    return {k: _schema(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_schema(v) for v in value]
  return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else \
      type(value).__name__


def test_both_engines_write_the_same_history_and_results_schema(runs):
  out, _ = runs
  custom, keras_ = ({name: json.loads((out / engine / name).read_text())
                     for name in ("history.json", "results.json")}
                    for engine in ("custom", "keras"))
  assert _schema(custom["history.json"]) == _schema(keras_["history.json"])
  history = custom["history.json"]
  assert [(h["epoch"], h["step"]) for h in history] == [(1, 16), (2, 32), (3, 48)]
  assert [("top1" in h) for h in history] == [False, True, True]
  for entry in history:
    for key in ("epoch_seconds", "epoch_images", "train_loss", "train_accuracy",
                "learning_rate", "patch_probability"):
      assert np.isfinite(entry[key]), key
  custom_results, keras_results = custom["results.json"], keras_["results.json"]
  custom_results.pop("engine"), keras_results.pop("engine")
  assert _schema(custom_results) == _schema(keras_results)
  assert custom["results.json"]["backend"] == keras_["results.json"]["backend"] == "tensorflow"


def test_both_engines_train_the_same_weights(runs):
  """Same data order (`data.batches`), step seeds and step functions (`core.step`): the two
  engines end on the same network, and log the same losses."""
  out, results = runs
  custom, keras_ = (load_network(str(out / engine / "model.keras")) for engine in runs[1])
  difference = max(float(np.max(np.abs(a - b)))
                   for a, b in zip(custom.get_weights(), keras_.get_weights()))
  print(f"tf.distribute vs Keras engine, 48 steps: max |weight difference| {difference:.3g}")
  assert difference <= 1e-5
  assert results["custom"]["top1"] == pytest.approx(results["keras"]["top1"], abs=1 / 359)
  histories = [json.loads((out / e / "history.json").read_text()) for e in ("custom", "keras")]
  for a, b in zip(*histories):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-6)


def test_a_run_folder_of_the_previous_layout_evaluates_and_resumes(tmp_path):
  """A folder written before the run loop and engines existed differs only in its JSON files:
  config.json without engine / strategy auto / data_in_memory / l2_scope, data_info.json without
  loader_crop, history entries without the train scalars, results.json without engine (the
  checkpoint formats did not change). Rewritten to that layout, a stopped run resumes to the
  uninterrupted run's weights and a finished one evaluates to its own results."""
  from mixmo_tf.evaluation.runs import evaluate_run
  settings = dict(SETTINGS, checkpoint_frequency=1)
  straight = training.run(tiny_config(tmp_path / "straight", **settings))
  training.run(tiny_config(tmp_path / "old", max_steps=16, **settings))
  folder = tmp_path / "old"

  def rewrite(name, edit):
    path = folder / name
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))

  new_keys = ("engine", "data_in_memory", "l2_scope")
  rewrite("config.json", lambda c: dict({k: v for k, v in c.items() if k not in new_keys},
                                        strategy="mirrored"))
  rewrite("data_info.json", lambda i: {k: v for k, v in i.items() if k != "loader_crop"})
  rewrite("history.json", lambda h: [{k: v for k, v in e.items() if not k.startswith("train_")
                                      and k not in ("learning_rate", "patch_probability")}
                                     for e in h])
  resumed = training.run(tiny_config(folder, **settings))
  assert resumed["weights_fingerprint"] == straight["weights_fingerprint"]
  rewrite("results.json", lambda r: {k: v for k, v in r.items() if k not in ("engine",
                                                                             "backend")})
  again = evaluate_run(str(folder), output_dir=str(tmp_path / "eval"))
  assert again["top1"] == pytest.approx(resumed["top1"], abs=1e-9)
  # What cannot be read is refused in one line naming the file.
  (folder / "config.json").write_text('{"dataset": "digits", "depth": "deep"}')
  with pytest.raises(ValueError, match="config.json"):
    evaluate_run(str(folder), output_dir=str(tmp_path / "eval2"))

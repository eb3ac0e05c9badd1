"""The JAX side of tests/test_no_tensorflow.py, in one process: everything a user does on a machine
without TensorFlow, through the commands' own `main` (`mixmo_tf.commands.call`).

Run by the test under tests/scripts/without_modules.py (TensorFlow, TFP and TFDS unimportable),
KERAS_BACKEND=jax and two forced host CPU devices:

    python tests/scripts/without_modules.py tests/scripts/jax_session.py OUT DATA

DATA holds what the test prepared: `ood/` (an image tree), `corrupted/` (a released-layout
CIFAR-10-C stand-in of 8x8 digits), `step_model.keras` + `step_batch.npz` (a network and a member
batch sampled under TensorFlow), `model_backends/` (models saved under TensorFlow,
tests/test_model_backends.py). Prints one "OK <check>" line per check and writes OUT/report.json.
"""

import json
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# digits: 1,438 training images; --train_subset=256 and 16 unique per step: 16 steps per epoch.
RUN_FLAGS = ["--dataset=digits", "--depth=10", "--width=1", "--num_members=2", "--mixing=cutmix",
             "--batch_repetitions=2", "--batch_size=32", "--train_subset=256", "--epochs=2",
             "--lr_decay_epochs=2", "--precision=float32", "--log_every_steps=1000"]
QUICKSTART_12 = ["--flagfile=flags/quickstart.flags", "--epochs=12", "--lr_decay_epochs=6,9,11",
                 "--eval_frequency=4", "--checkpoint_frequency=4", "--strategy=one_device"]


def check(name):
  print(f"OK {name}", flush=True)


def call(module, argv):
  from mixmo_tf import commands
  status = commands.call(module, argv)
  assert status == 0, (module.__name__, argv, status)


def weights(path):
  import keras
  return [np.asarray(w, np.float64) for w in keras.models.load_model(path).get_weights()]


def main(out: pathlib.Path, data: pathlib.Path):
  import keras

  import mixmo_tf  # The package itself loads without TensorFlow.
  from mixmo_tf import evaluate, export, tables, train
  from mixmo_tf.data import datasets
  from mixmo_tf.evaluation.predict import Predictor, load_network, predict_batches
  assert keras.backend.backend() == "jax" and mixmo_tf.__version__
  blocked = [m for m, v in sys.modules.items() if m.split(".")[0] in (
      "tensorflow", "tensorflow_datasets", "tensorflow_probability") and v is not None]
  assert not blocked, blocked
  devices = keras.distribution.list_devices()
  assert len(devices) == 2, devices
  report = {}

  # Item 4: data parallel over the two devices equals one device, through the driver.
  for name, strategy in (("dp", "auto"), ("one", "one_device")):
    call(train, RUN_FLAGS + ["--max_steps=3", f"--strategy={strategy}", "--seed=5",
                             f"--output_dir={out / name}"])
  config = json.loads((out / "dp" / "config.json").read_text())
  assert (config["engine"], config["strategy"]) == ("keras", "data_parallel"), config
  pairs = zip(weights(out / "dp" / "model.keras"), weights(out / "one" / "model.keras"))
  report["data_parallel_max_difference"] = max(float(np.max(np.abs(a - b))) for a, b in pairs)
  import jax

  from mixmo_tf.training.trainer import shard_batch
  with keras.distribution.DataParallel(devices=devices).scope():
    # Inside the step, the member batch is split over the devices (not run replicated).
    probe = jax.jit(lambda x: shard_batch([x], x, x, x)[0][0])
    split = probe(jax.numpy.zeros((32, 4)))
  assert split.sharding.shard_shape(split.shape)[0] == 16, split.sharding
  check("data parallel driver run equals one device")

  # Item 3: two runs (an ensemble's members), evaluate, baselines.ensemble, tables, export.
  ensemble_dir = out / "ensemble"
  for i in (0, 1):
    call(train, RUN_FLAGS + [f"--seed={7 + i}", "--eval_frequency=1",
                             f"--output_dir={ensemble_dir / f'run_{i}'}"])
  check("two runs trained")
  run = ensemble_dir / "run_0"
  call(evaluate, [str(run), "--plots", f"--ood=folder:{data / 'ood'}", "--corruptions=cifar10_c",
                  f"--corruptions_dir={data / 'corrupted'}", f"--output_dir={out / 'eval'}"])
  check("evaluate with plots, ood, corruptions")
  from baselines import ensemble
  call(ensemble, RUN_FLAGS + ["--seed=7", "--eval_frequency=1", "--num_runs=2",
                              f"--output_dir={ensemble_dir}", f"--ood=folder:{data / 'ood'}"])
  check("baselines.ensemble over both runs")
  import contextlib
  import io
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    status = tables.main([str(ensemble_dir / "run_0"), str(ensemble_dir / "run_1"),
                          str(ensemble_dir), "--members", "--timing", "--ood",
                          f"--curves={out / 'curves.png'}"])
  assert status == 0
  (out / "tables.md").write_text(text.getvalue())
  check("tables")
  network = load_network(str(run / "model.keras"))
  digits = datasets.digits_dataset()
  logits, _ = predict_batches(Predictor.from_network(network, digits.info), digits.test)
  np.save(out / "test_logits.npy", logits)
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    report["export_status"] = __import__("mixmo_tf.commands").commands.call(
        export, [f"--run_dir={run}"])
  report["export_message"] = stderr.getvalue().strip()
  check("export refused without tensorflow")

  # Wrapped networks (a user's, KerasHub's) trained by the driver, hence MixMoTrainer.fit.
  for name, model in (("user", f"file:{data / 'user_backbone.keras'}"),
                      ("keras_hub", f"keras_hub:{data / 'keras_hub_preset'}")):
    call(train, ["--dataset=digits", "--image_size=32", f"--model={model}", "--num_members=2",
                 "--batch_size=32", "--train_subset=64", "--epochs=1", "--lr_decay_epochs=1",
                 "--precision=float32", f"--output_dir={out / name}"])
  check("wrapped networks trained")

  # The quickstart's recipe on a 12-epoch schedule (the full 30 epochs: 98.05%, BUILD_NOTES.md).
  call(train, QUICKSTART_12 + [f"--output_dir={out / 'quickstart'}"])
  report["quickstart_top1"] = json.loads((out / "quickstart" / "results.json").read_text())["top1"]
  check("quickstart recipe trained")

  # Two SGD steps on a member batch sampled under TensorFlow, from the same initial network.
  from tests.test_keras_trainer import given_batch_steps
  with np.load(data / "step_batch.npz") as saved:
    arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  np.savez(out / "jax_step_weights.npz",
           *given_batch_steps(load_network(str(data / "step_model.keras")), arrays))
  check("given-batch steps written")
  from tests.test_backends import backend_checks_main
  backend_checks_main()
  from tests.test_model_backends import stage_jax
  stage_jax(data / "model_backends")
  check("models saved under TensorFlow loaded, trained and saved under JAX")
  (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
  os.chdir(REPO)
  main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))

"""The package on Keras' PyTorch backend, without TensorFlow (skipped where torch is not installed).

Two subprocesses run with KERAS_BACKEND=torch and TensorFlow refused (tests/scripts/
without_modules.py: a None entry in sys.modules per name, which torch._dynamo's import-time probe
reads as "not installed"):

- tests/test_backends.py's checks: the sampler statistics and the member_batch / w_r wiring
  checks that it runs under JAX, here eagerly.
- this file as a script (`python tests/test_torch_backend.py OUT`): 64-bit seeds and the rng
  checks, FusedBatchNorm's keras.ops path, PyTorchSGD against torch.optim.SGD, MSDA, a short
  `MixMoTrainer.fit` (finite loss, weights moved, the same seed giving the same weights), models
  saved both ways (the test process, TensorFlow in CI, loads the torch-saved network and gets the
  torch member logits within 1e-4, and the torch script those of a network it saved), and two
  SGD steps on one member batch sampled here, equal on both backends within 1e-4.

Each prints one "OK <check>" line per check.
"""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from tests import test_backends
from tests.helpers import run_without_tensorflow
from tests.test_keras_trainer import (CLASSES, SEED, SIZE, UNIQUE, given_batch_steps,
                                      learnable_data, tiny_network, tiny_spec,
                                      write_given_batch_steps)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="PyTorch is not installed (KERAS_BACKEND=torch checks)")

TOLERANCE = 1e-4  # Member logits across backends.
CHECKS = ("no tensorflow import", "64-bit seeds and rng draws", "batch norm keras.ops path",
          "PyTorchSGD matches torch.optim.SGD", "member_batch with MSDA",
          "fit: finite loss, weights moved, same seed same weights",
          "saved models load with the same member logits", "given-batch steps written")
FIT_STEPS = 3


# One OpenMP thread: on a busy 2-core machine torch's 2 threads made one 8x8 convolution 30x
# slower (7.8 ms against 0.27 ms).
TORCH_ENV = {"OMP_NUM_THREADS": "1"}


def test_sampler_checks_under_torch():
  out = run_without_tensorflow(["tests/test_backends.py"], backend="torch", env=TORCH_ENV)
  for check in test_backends.backend_checks("torch"):
    assert f"OK {check}" in out.splitlines(), (check, out[-3000:])


def _member_logits(model, folded, x):
  return (np.asarray(model.predict([x] * model.num_members, verbose=0)),
          np.asarray(folded.predict(x, verbose=0)))


def test_torch_fit_and_models_saved_across_backends(tmp_path):
  """A network saved here loads under torch, the one torch trained loads here (1e-4), and two
  steps on one member batch give the same weights on both backends (1e-4)."""
  import keras

  import mixmo_tf.models  # noqa: F401  (registers the serializable classes)
  from mixmo_tf.core import step as step_lib
  from tests.test_model_backends import perturb
  network = tiny_network()
  gen = np.random.default_rng(4)
  perturb(network, gen)
  x = gen.normal(size=(5, SIZE, SIZE, 3)).astype(np.float32)
  plain, folded = _member_logits(network, network.folded(), x)
  network.save(tmp_path / "parent.keras")
  np.savez(tmp_path / "parent.npz", x=x, plain=plain, folded=folded)
  images, labels = learnable_data(UNIQUE, seed=3)
  from mixmo_tf.core import seeds
  seed, batch_seed = step_lib.step_seeds(seeds.step_root(SEED), 0, 0)
  batch = step_lib.member_batch(tiny_spec(network), images, labels, (), seed, batch_seed, 0.5)
  arrays = [np.asarray(v) for v in list(batch.inputs) + [batch.masks, batch.targets, batch.kappa]]
  np.savez(tmp_path / "step_batch.npz", *arrays)
  initial = [np.asarray(w, np.float64) for w in network.get_weights()]
  parent_weights = given_batch_steps(network, arrays)

  out = run_without_tensorflow(["tests/test_torch_backend.py", str(tmp_path)], backend="torch",
                               env=TORCH_ENV)
  for check in CHECKS:
    assert f"OK {check}" in out.splitlines(), (check, out[-3000:])
  report = json.loads((tmp_path / "torch_report.json").read_text())
  print(f"\ntorch: fit losses {report['losses']}, weights moved {report['moved']:.3g}; "
        f"{keras.backend.backend()} -> torch max |logit difference| "
        f"{report['parent_difference']:.3g}")
  assert report["parent_difference"] <= TOLERANCE, report
  with np.load(tmp_path / "torch_step_weights.npz") as saved:
    torch_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(parent_weights, initial))
  difference = max(float(np.max(np.abs(a - b))) for a, b in zip(parent_weights, torch_weights))
  print(f"2 steps on one member batch, torch vs {keras.backend.backend()}: max |weight "
        f"difference| {difference:.3g} (the steps moved weights by up to {moved:.3g})")
  assert moved > 1e-2 and difference <= TOLERANCE, (difference, moved)

  saved = np.load(tmp_path / "torch.npz")
  model = keras.models.load_model(tmp_path / "torch.keras", safe_mode=True)
  folded_model = keras.models.load_model(tmp_path / "torch_folded.keras", safe_mode=True)
  got = _member_logits(model, folded_model, saved["x"])
  for key, value in zip(("plain", "folded"), got):
    assert value.shape == (len(x), 2, CLASSES)
    np.testing.assert_allclose(value, saved[key], atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(saved["folded"], saved["plain"], atol=TOLERANCE, rtol=0)


# ------------------------------------------------------------------------------------------------
# The script (run in the torch subprocess only).


def _check_rng():
  """All 64 seed bits count (a CPU torch.Generator keeps 32), then test_backends' rng checks."""
  import keras

  from mixmo_tf.core import rng
  draw = lambda seed: keras.ops.convert_to_numpy(rng.uniform([8], seed))
  np.testing.assert_array_equal(draw([3, 4]), draw(np.array([3, 4], np.int32)))
  for a, b in ((9902, 242356), ([5, 0], [5, 1]), ([5, 0], [5 + 2**31, 0])):
    assert not np.array_equal(draw(a), draw(b)), (a, b)  # 9902, 242356: equal low 32 bits
  test_backends.test_rng_seeds_and_small_concentrations()


def _check_batch_norm():
  """Training forward: batch statistics normalise; moving stats momentum 0.9, unbiased variance."""
  import keras

  from mixmo_tf.models.layers import FusedBatchNorm
  x = np.random.default_rng(6).normal(1.0, 2.0, (6, 3, 3, 4)).astype(np.float32)
  layer = FusedBatchNorm(synchronized=False)
  layer.build(x.shape)
  layer.gamma.assign(np.linspace(0.5, 2.0, 4).astype(np.float32))
  layer.moving_variance.assign(np.full(4, 2.0, np.float32))
  out = keras.ops.convert_to_numpy(layer(x, training=True))
  mean, variance, n = x.mean((0, 1, 2)), x.var((0, 1, 2)), x.size // 4
  gamma = np.linspace(0.5, 2.0, 4)
  np.testing.assert_allclose(out, (x - mean) / np.sqrt(variance + 1e-5) * gamma, atol=1e-5)
  np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, atol=1e-6)
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             0.9 * 2.0 + 0.1 * variance * n / (n - 1), atol=1e-6)
  out = keras.ops.convert_to_numpy(layer(x, training=False))
  expected = ((x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-5)
              * gamma)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def _check_sgd():
  """PyTorchSGD on the torch backend equals torch.optim.SGD across an LR change."""
  import keras
  import torch

  from mixmo_tf.core.optimizers import PyTorchSGD
  gen = np.random.default_rng(2)
  init = [gen.normal(size=(3,)).astype(np.float32), gen.normal(size=(2, 2)).astype(np.float32)]
  grads = [[gen.normal(size=w.shape).astype(np.float32) for w in init] for _ in range(4)]
  lrs = (0.1, 0.1, 0.02, 0.02)
  current = {"lr": lrs[0]}
  variables = [keras.Variable(w) for w in init]
  ours = PyTorchSGD(lambda: current["lr"], momentum=0.9, nesterov=True, torch_weight_decay=0.01)
  params = [torch.tensor(w, requires_grad=True) for w in init]
  theirs = torch.optim.SGD(params, lr=lrs[0], momentum=0.9, nesterov=True, weight_decay=0.01)
  for lr, step_grads in zip(lrs, grads):
    current["lr"] = lr
    ours.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in step_grads], variables))
    for group in theirs.param_groups:
      group["lr"] = lr
    for p, g in zip(params, step_grads):
      p.grad = torch.tensor(g)
    theirs.step()
  for v, p in zip(variables, params):
    np.testing.assert_allclose(v.numpy(), p.detach().numpy(), atol=1e-6)


def _check_msda():
  """member_batch with CutMix / Mixup partners: inputs per member, soft targets summing to 1."""
  import keras

  from mixmo_tf.core import rng
  from mixmo_tf.core import step as step_lib
  network = tiny_network()
  images, labels = learnable_data(4 * UNIQUE)
  for method in ("cutmix", "mixup"):
    spec = step_lib.StepSpec(**dict(vars(tiny_spec(network)), msda=method, msda_probability=1.0))
    partners = (images[:2 * 2 * UNIQUE], labels[:2 * 2 * UNIQUE])  # M * B partners
    batch = step_lib.member_batch(spec, images[:UNIQUE], labels[:UNIQUE], partners,
                                  rng.as_seed([1, 2]), rng.as_seed([3, 4]), 1.0)
    targets = keras.ops.convert_to_numpy(batch.targets)
    assert targets.shape == (2 * UNIQUE, 2, CLASSES) and len(batch.inputs) == 2
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    assert np.mean(targets.max(-1) < 1.0) > 0.5, method  # Most examples were mixed.


def _fit(initial, steps):
  """A trainer on the tiny network from `initial`, fitted for `steps` steps; (trainer, losses)."""
  import keras

  from mixmo_tf.core import optimizers, schedules
  from mixmo_tf.training import trainer as keras_trainer
  network = tiny_network(1)
  network.set_weights(initial)
  trainer = keras_trainer.MixMoTrainer(network, tiny_spec(network), seed=SEED,
                                       steps_per_epoch=steps, epochs=2)
  schedule = schedules.WarmupPiecewiseSchedule(0.05, steps, warmup_steps=2)
  trainer.compile(optimizer=optimizers.make_optimizer("pytorch", schedule))
  images, labels = learnable_data(steps * UNIQUE)
  history = keras.callbacks.History()
  trainer.fit(keras_trainer.train_arrays_dataset(images, labels, UNIQUE, seed=SEED), epochs=1,
              verbose=0, callbacks=[history])
  return trainer, history.history["loss"]


def _torch_main(out: pathlib.Path):
  import keras

  import mixmo_tf  # The package itself must load without TensorFlow.
  from tests.test_keras_trainer import max_weight_difference
  assert keras.backend.backend() == "torch" and mixmo_tf.__version__, keras.backend.backend()
  print("OK no tensorflow import", flush=True)
  _check_rng()
  print("OK 64-bit seeds and rng draws", flush=True)
  _check_batch_norm()
  print("OK batch norm keras.ops path", flush=True)
  _check_sgd()
  print("OK PyTorchSGD matches torch.optim.SGD", flush=True)
  _check_msda()
  print("OK member_batch with MSDA", flush=True)

  initial = tiny_network().get_weights()
  trainer, losses = _fit(initial, FIT_STEPS)
  again, _ = _fit(initial, FIT_STEPS)
  assert trainer.global_step == FIT_STEPS and np.all(np.isfinite(losses)), losses
  moved = max(float(np.max(np.abs(w - v))) for w, v in zip(trainer.network.get_weights(), initial))
  assert moved > 1e-3, moved
  assert max_weight_difference(trainer.network, again.network) <= 1e-6
  print("OK fit: finite loss, weights moved, same seed same weights", flush=True)

  parent = np.load(out / "parent.npz")
  x = parent["x"]
  network, folded = trainer.network, trainer.network.folded()
  plain_logits, folded_logits = _member_logits(network, folded, x)
  network.save(out / "torch.keras")
  folded.save(out / "torch_folded.keras")
  np.savez(out / "torch.npz", x=x, plain=plain_logits, folded=folded_logits)
  reloaded = keras.models.load_model(out / "torch.keras", safe_mode=True)
  np.testing.assert_allclose(reloaded.predict([x, x], verbose=0), plain_logits, atol=1e-6)
  from_parent = keras.models.load_model(out / "parent.keras", safe_mode=True)
  parent_logits = _member_logits(from_parent, from_parent.folded(), x)
  parent_difference = max(float(np.max(np.abs(got - parent[key])))
                          for key, got in zip(("plain", "folded"), parent_logits))
  assert parent_difference <= TOLERANCE, parent_difference
  print("OK saved models load with the same member logits", flush=True)
  write_given_batch_steps(out / "parent.keras", out / "step_batch.npz",
                          out / "torch_step_weights.npz")
  print("OK given-batch steps written", flush=True)
  (out / "torch_report.json").write_text(json.dumps(dict(
      losses=losses, moved=moved, parent_difference=parent_difference)))


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  _torch_main(pathlib.Path(sys.argv[1]))

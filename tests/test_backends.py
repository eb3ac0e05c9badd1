"""The keras.ops sampling, augmentation, loss and schedule modules on JAX, without TensorFlow.

`backend_checks_main` repeats the statistical and wiring checks of tests/test_mixing.py and
tests/test_step.py on the current Keras backend and prints one "OK <check>" line per check. The
JAX session of tests/conftest.py (`jax_session`: TensorFlow, TFP and TFDS unimportable) runs it
under JAX; tests/test_torch_backend.py runs this file as a script under PyTorch. Each backend has
its own random streams (`mixmo_tf.core.rng`): the distributions are checked, not the numbers.
"""

import sys

import numpy as np

from tests.reference import is_rectangle, reference_cutmix_kappa  # NumPy only

CHECKS = ("cutmix kappa follows the reference procedure",
          "linear kappa is Beta(2, 2)", "p = 0 linear, p = 1 binary",
          "role shuffle per batch and fair", "M = 3 patch one, interpolate others",
          "masks sum to 1, kappa = mask mean", "member_batch wiring", "w_r hand values",
          "same seed, same masks under jax.jit")


def backend_checks(backend: str) -> tuple:
  """The "OK <check>" names `backend_checks_main` prints under `backend` ("jax" or "torch")."""
  if backend == "jax":
    return CHECKS
  return CHECKS[:-1] + (f"same seed, same masks under {backend}",)


def test_jax_backend_runs_the_same_functions_without_tensorflow(jax_session):
  lines = jax_session.log.splitlines()
  for check in CHECKS:
    assert f"OK {check}" in lines, (check, jax_session.log[-3000:])


def test_rng_seeds_and_small_concentrations():
  """mixmo_tf.rng on the test process's backend: int seeds, bad seeds named, finite Dirichlet."""
  import numpy as np
  import pytest
  from scipy import stats

  from mixmo_tf.core import rng
  np.testing.assert_array_equal(np.asarray(rng.as_seed(5)).astype(np.int64), [5, 0])
  np.testing.assert_array_equal(np.asarray(rng.as_seed(2**32 + 3)).astype(np.int64), [3, 1])
  with pytest.raises(ValueError, match=r"\(3,\)"):
    rng.as_seed(np.arange(3))
  with pytest.raises(ValueError, match=str(2**70)):
    rng.as_seed(2**70)
  with pytest.raises(ValueError, match="-1.0"):
    rng.dirichlet([4], 0, -1.0, 2)
  children = np.asarray(rng.split(7, 3)).tolist() + [np.asarray(rng.fold_in(7, 0)).tolist()]
  assert len({tuple(c) for c in children}) == 4
  np.testing.assert_array_equal(rng.uniform([6], rng.fold_in(7, 3)),
                                rng.uniform([6], rng.fold_in(7, 3)))
  # alpha = 0.05: most float32 Gamma(0.05) draws are tiny; the log-space draw keeps rows finite.
  kappa = np.asarray(rng.dirichlet([4000], 1, 0.05, 3))
  assert np.all(np.isfinite(kappa)) and np.allclose(kappa.sum(-1), 1.0, atol=1e-5)
  reference = np.random.default_rng(0).dirichlet([0.05] * 3, 4000).astype(np.float32)
  assert stats.ks_2samp(kappa[:, 0], reference[:, 0]).pvalue > 0.01  # float32 rounds to 0, 1
  lam = np.asarray(rng.beta([4000], 2, 2.0, 5.0))
  assert stats.kstest(lam, stats.beta(2.0, 5.0).cdf).pvalue > 0.01
  ints = np.asarray(rng.uniform([4000], 3, 2, 6, dtype="int32"))
  assert set(np.unique(ints)) == {2, 3, 4, 5}  # maxval exclusive


# --------------------------------------------------------------------------------------------
# The checks (run under JAX in the JAX session, under PyTorch as a script).


def _compiler(backend):
  """(jit(fn, static_argnums=()), its name): `jax.jit` under JAX; identity elsewhere (eager)."""
  if backend == "jax":
    import jax
    return jax.jit, "jax.jit"
  return (lambda fn, static_argnums=(): fn), backend


def backend_checks_main():
  import keras
  from scipy import stats

  from mixmo_tf.core import losses, mixing, rng, step
  backend = keras.backend.backend()
  assert backend in ("jax", "torch"), backend

  jit, jit_name = _compiler(backend)
  masks_fn = jit(mixing.sample_masks, static_argnums=(0, 1, 2, 3, 4))
  seed = rng.as_seed
  ops = keras.ops

  n, size = 20000, 32
  lam = np.random.default_rng(0).beta(2, 2, n).astype(np.float32)
  box_kappa = jit(lambda s, k: ops.mean(mixing.cutmix_box(s, k, size, size), axis=(1, 2)))
  ours = np.asarray(box_kappa(seed([5, 7]), ops.convert_to_tensor(lam)))
  ref = reference_cutmix_kappa(n, size, np.random.default_rng(1))
  assert stats.ks_2samp(ours, ref).pvalue > 0.01
  assert stats.kstest(ours, stats.beta(2, 2).cdf).pvalue < 1e-6  # truncation shows
  kappa = np.asarray(masks_fn(n, size, size, 2, "cutmix", 2.0, 1.0, seed(11))[1])
  ours_min = np.minimum(kappa[:, 0], kappa[:, 1])
  assert stats.ks_2samp(ours_min, np.minimum(ref, 1 - ref)).pvalue > 0.01
  beta = np.random.default_rng(2).beta(2, 2, n)
  assert stats.ks_2samp(ours_min, np.minimum(beta, 1 - beta)).pvalue < 1e-6
  print("OK cutmix kappa follows the reference procedure", flush=True)

  kappa = np.asarray(masks_fn(n, 4, 4, 2, "linear", 2.0, 0.5, seed(5))[1])
  assert stats.kstest(kappa[:, 0], stats.beta(2, 2).cdf).pvalue > 0.01
  kappa3 = np.asarray(masks_fn(n, 4, 4, 3, "linear", 2.0, 0.5, seed(5))[1])
  assert stats.kstest(kappa3[:, 1], stats.beta(2, 4).cdf).pvalue > 0.01
  print("OK linear kappa is Beta(2, 2)", flush=True)

  for s in range(10):
    m = np.asarray(masks_fn(8, 8, 8, 2, "cutmix", 2.0, 0.0, seed(s))[0])
    assert np.all(m == m[:, :, :1, :1, :])
    m = np.asarray(masks_fn(8, 8, 8, 2, "cutmix", 2.0, 1.0, seed(s))[0])
    assert set(np.unique(m)) <= {0.0, 1.0}
  binary = [set(np.unique(np.asarray(masks_fn(8, 8, 8, 2, "cutmix", 2.0, 0.5, seed(s))[0])))
            <= {0.0, 1.0} for s in range(200)]
  assert 0.4 < np.mean(binary) < 0.6, np.mean(binary)
  print("OK p = 0 linear, p = 1 binary", flush=True)

  rect_for_member0 = []
  for s in range(200):
    m0 = np.asarray(masks_fn(16, 16, 16, 2, "cutmix", 2.0, 1.0, seed(s))[0])[:, 0, :, :, 0]
    is_rect = [is_rectangle(m) and not is_rectangle(1 - m) for m in m0 if 0 < m.sum() < m.size]
    assert len(set(is_rect)) <= 1  # one role for the whole batch
    if is_rect:
      rect_for_member0.append(is_rect[0])
  assert 0.4 < np.mean(rect_for_member0) < 0.6, np.mean(rect_for_member0)
  print("OK role shuffle per batch and fair", flush=True)

  m = np.asarray(masks_fn(64, 8, 8, 3, "cutmix", 2.0, 1.0, seed(2))[0])[..., 0]
  for example in m:
    binary = [np.all(np.isin(example[i], [0.0, 1.0])) for i in range(3)]
    assert sum(binary) >= 1
    box = example[int(np.argmax(binary))]
    for i in range(3):
      if i != int(np.argmax(binary)):  # zero on the box, constant on its complement
        assert np.all(example[i][box == 1] == 0)
        assert (box == 0).sum() == 0 or np.ptp(example[i][box == 0]) < 1e-6
  print("OK M = 3 patch one, interpolate others", flush=True)

  shapes = jit(lambda s: [mixing.sample_masks(16, 8, 6, m, method, 2.0, 0.5, s)
                          for method in mixing.mixing_methods() for m in (1, 2, 3)])
  for masks, kappa in shapes(seed(3)):
    masks, kappa = np.asarray(masks), np.asarray(kappa)
    assert masks.shape[2:] == (8, 6, 1) and masks.dtype == np.float32
    np.testing.assert_allclose(np.sum(masks, 1), 1.0, atol=1e-6)
    np.testing.assert_allclose(kappa, np.mean(masks, (2, 3, 4)), atol=1e-6)
  print("OK masks sum to 1, kappa = mask mean", flush=True)

  unique, reps, grid, members = 8, 2, 8, 3
  spec = step.StepSpec(
      num_members=members, batch_repetitions=reps, input_repetition_probability=0.0,
      mixing="cutmix", alpha=2.0, weight_root=3.0, msda="none", msda_alpha=1.0,
      msda_probability=1.0, global_batch_size=unique * reps, l2=0.0, num_replicas=1,
      num_classes=64, crop_padding=2, flip=True, mean=(0.0,) * 3, std=(1.0,) * 3,
      mask_shape=(grid, grid))
  values = 20 * (np.arange(unique) + 1)  # example k shows value 20 (k + 1)
  images = np.broadcast_to(values.astype(np.uint8)[:, None, None, None],
                           (unique, grid, grid, 3)).copy()
  labels = ((np.arange(unique) * 7) % 64).astype(np.int32)
  run = jit(lambda x, y, s, b: step.member_batch(spec, x, y, (), s, b, 1.0))
  batch = run(ops.convert_to_tensor(images), ops.convert_to_tensor(labels), seed([3, 4]),
              seed([5, 6]))
  batch = batch._replace(**{k: ops.convert_to_numpy(v) for k, v in batch._asdict().items()
                            if k != "inputs"})
  indices = np.asarray(batch.indices)
  assert indices.shape == (members, unique * reps)
  for i in range(members):
    np.testing.assert_array_equal(np.bincount(indices[i], minlength=unique), reps)
    x = np.round(np.asarray(batch.inputs[i]) * 255).astype(int)
    for j, k in enumerate(indices[i]):
      assert set(np.unique(x[j])) - {0} == {values[k]}, (i, j)  # 0: the crop's padding
      assert np.argmax(batch.targets[j, i]) == labels[k], (i, j)
  np.testing.assert_allclose(batch.kappa, np.mean(batch.masks, (2, 3, 4)), atol=1e-6)
  print("OK member_batch wiring", flush=True)

  for k, expected in ((0.1, (0.6493, 1.3507)), (0.25, (0.8189, 1.1811)), (0.0, (0.0, 2.0))):
    w = np.asarray(losses.mixmo_weights(np.array([[k, 1 - k]], np.float32), 3.0))[0]
    np.testing.assert_allclose(w, expected, atol=1e-4)
  print("OK w_r hand values", flush=True)

  to_numpy = lambda pair: [np.asarray(t) for t in pair]
  first = to_numpy(masks_fn(8, 8, 8, 2, "cutmix", 2.0, 0.5, seed([1, 2])))
  again = to_numpy(masks_fn(8, 8, 8, 2, "cutmix", 2.0, 0.5, seed([1, 2])))
  other = to_numpy(masks_fn(8, 8, 8, 2, "cutmix", 2.0, 0.5, seed([1, 3])))
  eager = to_numpy(mixing.sample_masks(8, 8, 8, 2, "cutmix", 2.0, 0.5, [1, 2]))
  for a, b, e in zip(first, again, eager):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, e, atol=1e-6)  # jit may fuse float ops: ulps, not draws
  assert not np.array_equal(first[1], other[1])
  # A step's seeds: the same (seed, step) gives the same draws, another step other draws.
  root = np.array([7, 0x5EED], np.int32)
  step_kappa = lambda t: np.asarray(mixing.sample_masks(
      8, 8, 8, 2, "cutmix", 2.0, 0.5, *step.step_seeds(root, t, 0))[1])
  np.testing.assert_array_equal(step_kappa(3), step_kappa(3))
  assert not np.array_equal(step_kappa(3), step_kappa(4))
  print(f"OK same seed, same masks under {jit_name}", flush=True)


if __name__ == "__main__":
  import pathlib
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  backend_checks_main()

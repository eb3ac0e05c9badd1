"""Which engine trains a run, on which devices, and what each backend can run.

Two engines implement the same small interface for `training.loop.RunLoop`:

  custom  `training.tf_engine.TFDistributeEngine`: a tf.distribute custom loop (MirroredStrategy,
          multi-worker or TPU); the default on the TensorFlow backend (the design card's loop).
  keras   `training.keras_engine.KerasEngine`: `MixMoTrainer.fit` on any backend, several local
          devices through keras.distribution.DataParallel on JAX; the default elsewhere.

An engine has `network`, `steps_per_epoch`, `global_step`, `learning_rate(step)`, and
`restore() -> step`, `save(step)`, `train(batches, epoch, first_batch, num_steps, report)`, where
`report(step, loss, accuracy)` is called after every step. `resolve` settles --engine,
--strategy and --precision for this machine and refuses, before anything is read or written, what
cannot run here, naming the flag and the backend.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from mixmo_tf import runtime
from mixmo_tf.config import Config
from mixmo_tf.data import corrupted, ood_sets
from mixmo_tf.data.datasets import TFDS_DATASETS, tfds_importable
from mixmo_tf.run_folder import RunFolder
from mixmo_tf.run_folder.folder import CONFIG

TF_STRATEGIES = ("mirrored", "multi_worker", "tpu")  # tf.distribute: the custom engine's.
KERAS_STRATEGIES = ("data_parallel", "one_device")  # keras.distribution: the Keras engine's.


def _refusals(config: Config, backend: str, engine: str, strategy: str):
  """(flag, why) for every setting that cannot run on `backend` with `engine`."""
  found = []
  if engine == "custom" and backend != "tensorflow":
    found.append(("--engine=custom", "the tf.distribute engine needs KERAS_BACKEND=tensorflow; "
                                     "use --engine=keras"))
  if engine == "keras" and strategy in TF_STRATEGIES:
    found.append((f"--strategy={strategy}", "a tf.distribute strategy runs on --engine=custom "
                                            "(KERAS_BACKEND=tensorflow)"))
  if engine == "custom" and strategy in KERAS_STRATEGIES:
    found.append((f"--strategy={strategy}", "a keras.distribution setting of --engine=keras"))
  if strategy == "data_parallel" and backend != "jax":
    found.append(("--strategy=data_parallel", "keras.distribution.DataParallel runs on the JAX "
                                              "backend (on TensorFlow: --engine=custom "
                                              "--strategy=mirrored)"))
  if config.augmix and backend != "tensorflow":
    found.append(("--augmix", "AugMix is built on tf.image (KERAS_BACKEND=tensorflow)"))
  if config.jit_compile and engine == "keras" and backend == "tensorflow":
    found.append(("--jit_compile", "the Keras engine's whole step would go to XLA, which has no "
                                   "kernel for TensorFlow's stateless gamma sampler (kappa); use "
                                   "--engine=custom, which compiles forward and backward only"))
  tfds = tfds_importable()
  if config.dataset in TFDS_DATASETS and not tfds:
    found.append((f"--dataset={config.dataset}", "it is read through TensorFlow Datasets, and "
                                                 "TensorFlow is not importable here (or use "
                                                 "--dataset=folder)"))
  if (config.corruptions == "cifar10_c" and not corrupted.is_released_folder(
      config.corruptions_dir) and not tfds):
    found.append(("--corruptions=cifar10_c", "without a released .npy folder in "
                                             "--corruptions_dir it is read through TensorFlow "
                                             "Datasets, and TensorFlow is not importable here"))
  if ood_sets.needs_tfds(config.ood) and not tfds:
    names = ",".join(ood_sets.needs_tfds(config.ood))
    found.append((f"--ood={names}", "TensorFlow Datasets sets, and TensorFlow is not importable "
                                    "here (folder:PATH sets work everywhere)"))
  return found


def resolve(config: Config, backend: str) -> Config:
  """`config` with --engine and --strategy settled for `backend` (auto: custom + mirrored on
  TensorFlow; keras + data_parallel on JAX, keras + one_device elsewhere). Raises ValueError
  naming every flag that cannot run here, and why."""
  engine = config.engine if config.engine != "auto" else (
      "custom" if backend == "tensorflow" else "keras")
  strategy = config.strategy
  if strategy == "auto":
    strategy = "mirrored" if engine == "custom" else (
        "data_parallel" if backend == "jax" else "one_device")
  problems = _refusals(config, backend, engine, strategy)
  if problems:
    raise ValueError(f"KERAS_BACKEND={backend} cannot run: " + "; ".join(
        f"{flag} ({why})" for flag, why in problems) + ".")
  return dataclasses.replace(config, engine=engine, strategy=strategy)


def accelerator_present(backend: str) -> bool:
  """Whether the backend computes on a GPU/TPU (bf16 by --precision=auto)."""
  if backend == "jax":
    import jax
    return jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")
  if backend == "torch":
    import torch
    return bool(torch.cuda.is_available())
  if backend == "tensorflow":
    import tensorflow as tf
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
  return False


def with_precision(config: Config, backend: str, accelerator: bool) -> Config:
  """Config with --precision=auto resolved for this machine (runtime.resolve_precision), or the
  precision of the run being resumed, so a resume never switches it silently; logged."""
  folder = RunFolder(config.output_dir)
  precision, reason = None, ""
  if config.precision == "auto" and not config.overwrite and os.path.exists(folder.file(CONFIG)):
    try:
      precision = folder.read_config_dict().get("precision", "float32")
      reason = "kept from the resumed run"
    except ValueError:
      precision = None  # An unreadable config.json is reported by the resume check.
  if precision is None:
    precision = runtime.resolve_precision(config.precision, backend, accelerator)
    reason = runtime.precision_reason(config.precision, backend, accelerator)
  logging.info("Precision %s (%s).", precision, reason)
  return dataclasses.replace(config, precision=precision)


def backend_line(backend: str) -> str:
  """One log line: Keras, the backend, its version and devices, and the CPU."""
  import keras
  version, devices = "", ""
  if backend == "jax":
    import jax
    version, devices = jax.__version__, ", ".join(str(d) for d in jax.devices())
  elif backend == "torch":
    import torch
    version = torch.__version__
    devices = "cuda" if torch.cuda.is_available() else "cpu"
  elif backend == "tensorflow":
    import tensorflow as tf
    version = tf.__version__
    devices = ", ".join(d.name for d in tf.config.list_logical_devices())
  return (f"Keras {keras.__version__} on {backend} {version} ({devices}); CPU: "
          f"{runtime.cpu_model()}.")

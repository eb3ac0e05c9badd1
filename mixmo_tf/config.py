"""Run configuration: absl flag definitions (entry points only) and the frozen `Config` they build.

Library code receives a `Config`. The training entry points (`mixmo_tf.train`,
`baselines.ensemble`) define one flag per field with `define_flags()` and build the Config with
`config_from_flags()`; `evaluate` and `export` read a run's saved `config.json` instead
(`run_folder.RunFolder.read_config`). `Config.validate()` rejects bad values before any data is
read, naming the flag and the allowed values; what the backend cannot run is refused next, by
`training.engines.resolve`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Tuple

from mixmo_tf.core import mixing, seeds
from mixmo_tf.core.optimizers import OPTIMIZERS
from mixmo_tf.data.datasets import DATASETS, IN_MEMORY
from mixmo_tf.models import MODELS
from mixmo_tf.models.arguments import model_argument_errors
from mixmo_tf.models.backbone import SOURCES, parse_source
from mixmo_tf.runtime import PRECISIONS

MSDA = ("none", "mixup", "cutmix")
ENSEMBLE = ("logits", "probs")
ENGINES = ("auto", "custom", "keras")
# auto; tf.distribute strategies (--engine=custom); keras.distribution settings (--engine=keras).
STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "data_parallel", "one_device")
CORRUPTIONS = ("none", "cifar10_c", "cifar100_c")
L2_SCOPES = ("all", "kernels")

# Resuming an output_dir with other values of these flags is an error: the first fix the network
# and the data it was built for, the second map a step to an epoch, a data order, random draws
# and a learning rate.
ARCHITECTURE_KEYS = ("dataset", "model", "depth", "width", "num_members", "image_size")
SCHEDULE_KEYS = ("train_subset", "batch_size", "batch_repetitions", "seed", "precision")
RESUME_KEYS = ARCHITECTURE_KEYS + SCHEDULE_KEYS


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of a run. Defaults: the official Cut-MixMo CIFAR-100 WRN-28-10 b=2 recipe."""
  # Data.
  dataset: str = "cifar100"
  data_dir: str = ""
  image_size: int = 0  # 0: the dataset's native size.
  train_subset: int = 0  # 0: all; N: a fixed random subset of N (seed 0), for quick runs.
  data_in_memory: str = "auto"  # auto, true, false: decode image files once, or per batch.
  # Model.
  model: str = "wide_resnet"
  depth: int = 28
  width: int = 10
  num_members: int = 2
  # MixMo (Sec. 3) and pixel-level MSDA (Sec. 4.2).
  mixing: str = "cutmix"
  alpha: float = 2.0
  patch_probability: float = 0.5
  weight_root: float = 3.0
  batch_repetitions: int = 2
  input_repetition_probability: float = 0.0
  msda: str = "none"
  msda_alpha: float = 1.0
  msda_probability: float = 0.5
  augmix: bool = False
  augmix_width: int = 3
  augmix_depth: int = 4
  augmix_severity: int = 3
  # Optimisation (docs/method.md §7): lr0 = base_learning_rate * (batch_size / b) / 128.
  batch_size: int = 64  # Global, counted with repetitions.
  epochs: int = 300
  base_learning_rate: float = 0.1
  lr_warmup_epochs: float = 1.0
  lr_decay_epochs: Tuple[int, ...] = (101, 201, 226)
  lr_decay_ratio: float = 0.1
  l2: float = 3e-4
  l2_scope: str = "all"  # all trainable parameters (official MixMo) or kernels (UB's ImageNet).
  optimizer: str = "pytorch"  # SGD rule: pytorch (the official code's) or keras.
  seed: int = 1234
  max_steps: int = 0  # 0: run all epochs; N: stop after N steps (smoke tests).
  # Evaluation and outputs.
  ensemble: str = "logits"
  corruptions: str = "none"  # Robustness test set evaluated at the end: none, cifar10_c, cifar100_c.
  corruptions_dir: str = ""  # cifar100_c: the released .npy folder; cifar10_c: a TFDS data_dir.
  ood: Tuple[str, ...] = ()  # Out-of-distribution sets scored at the end: TFDS names, folder:PATH.
  ood_data_dir: str = ""  # TFDS data_dir of the OOD sets ('' : the run's data_dir).
  eval_frequency: int = 1
  checkpoint_frequency: int = 1
  keep_checkpoints: int = 3
  log_every_steps: int = 50
  output_dir: str = ""
  overwrite: bool = False
  # Scale.
  engine: str = "auto"  # custom (tf.distribute) on TensorFlow, keras elsewhere; resolved per run.
  strategy: str = "auto"
  jit_compile: bool = False
  precision: str = "auto"  # Resolved per machine at the start of a run (config.json keeps it).
  sync_batch_norm: bool = True  # BN statistics over the global batch when there are replicas.
  tpu: str = ""

  @property
  def unique_batch_size(self) -> int:
    return self.batch_size // self.batch_repetitions

  @property
  def base_lr(self) -> float:
    """lr0, scaled with the unique samples per step (docs/method.md §6.6)."""
    return self.base_learning_rate * self.unique_batch_size / 128.0

  def validate(self, num_replicas: int = 1) -> "Config":
    """Raises ValueError naming the offending flag and its allowed values."""
    def choice(name, allowed):
      if getattr(self, name) not in allowed:
        raise ValueError(f"--{name}={getattr(self, name)!r} is not valid; allowed: "
                         f"{', '.join(allowed)}.")

    seeds.check_seed(self.seed)
    choice("dataset", DATASETS)
    choice("data_in_memory", IN_MEMORY)
    if not parse_source(self.model):  # <source>:<argument> wraps a backbone (models.backbone).
      choice("model", tuple(MODELS) + tuple(f"{s}:<name or path>" for s in SOURCES))
    for name, _, expected in model_argument_errors(self.model, self.depth, self.width,
                                                   self.num_members)[:1]:
      raise ValueError(f"--{name}={getattr(self, name)!r} is not valid; expected {expected}.")
    choice("mixing", mixing.mixing_methods())
    choice("msda", MSDA)
    choice("ensemble", ENSEMBLE)
    choice("engine", ENGINES)
    choice("strategy", STRATEGIES)
    choice("precision", PRECISIONS)
    choice("corruptions", CORRUPTIONS)
    choice("optimizer", OPTIMIZERS)
    choice("l2_scope", L2_SCOPES)
    for name in self.ood:
      if name.startswith("folder:") and not os.path.isdir(name[len("folder:"):]):
        raise ValueError(f"--ood={name!r}: {name[len('folder:'):]!r} is not an existing "
                         "directory.")
    if self.corruptions == "cifar100_c" and not os.path.isdir(self.corruptions_dir):
      raise ValueError(f"--corruptions_dir={self.corruptions_dir!r} is not an existing directory "
                       "(needed by --corruptions=cifar100_c: the released CIFAR-100-C .npy files).")
    if self.corruptions == "none" and self.corruptions_dir:
      raise ValueError(f"--corruptions_dir={self.corruptions_dir!r} is given but --corruptions="
                       "none; name the set (cifar10_c or cifar100_c) or drop the directory.")

    def check(ok, name, allowed):
      if not ok:
        raise ValueError(f"--{name}={getattr(self, name)!r} is not valid; expected {allowed}.")

    check(self.alpha > 0, "alpha", "a value > 0")
    check(self.msda_alpha > 0, "msda_alpha", "a value > 0")
    check(self.weight_root > 0, "weight_root", "a value > 0")
    check(0 <= self.patch_probability <= 1, "patch_probability", "a value in [0, 1]")
    check(0 <= self.msda_probability <= 1, "msda_probability", "a value in [0, 1]")
    check(0 <= self.input_repetition_probability <= 1, "input_repetition_probability",
          "a value in [0, 1]")
    check(self.augmix_width >= 1, "augmix_width", "an integer >= 1")
    check(self.augmix_depth >= 1, "augmix_depth", "an integer >= 1")
    check(0 <= self.augmix_severity <= 30, "augmix_severity", "an integer in [0, 30]")
    check(self.batch_repetitions >= 1, "batch_repetitions", "an integer >= 1")
    check(self.epochs >= 1, "epochs", "an integer >= 1")
    check(self.base_learning_rate > 0, "base_learning_rate", "a value > 0")
    check(self.l2 >= 0, "l2", "a value >= 0")
    check(self.eval_frequency >= 1, "eval_frequency", "an integer >= 1")
    check(self.checkpoint_frequency >= 1, "checkpoint_frequency", "an integer >= 1")
    check(self.max_steps >= 0, "max_steps", "an integer >= 0")
    check(self.log_every_steps >= 1, "log_every_steps", "an integer >= 1")
    check(self.keep_checkpoints >= 1, "keep_checkpoints", "an integer >= 1")
    check(self.lr_warmup_epochs >= 0, "lr_warmup_epochs", "a value >= 0")
    check(self.lr_decay_ratio > 0, "lr_decay_ratio", "a value > 0")
    check(all(e >= 1 for e in self.lr_decay_epochs), "lr_decay_epochs", "1-based epochs >= 1")
    check(self.train_subset >= 0, "train_subset", "an integer >= 0")
    check(self.image_size >= 0, "image_size", "an integer >= 0 (0: native size)")
    check(list(self.lr_decay_epochs) == sorted(self.lr_decay_epochs), "lr_decay_epochs",
          "increasing epochs")
    if self.precision == "mixed_float16" and num_replicas > 1:
      raise ValueError("--precision=mixed_float16 is not valid with more than one replica (a "
                       "replica's overflow could reach the shared weights); use mixed_bfloat16.")
    divisor = self.batch_repetitions * num_replicas
    if self.batch_size < divisor or self.batch_size % divisor:
      raise ValueError(
          f"--batch_size={self.batch_size} is not valid with --batch_repetitions="
          f"{self.batch_repetitions}; expected a multiple of batch_repetitions x replicas = "
          f"{self.batch_repetitions} x {num_replicas} = {divisor}.")
    if self.dataset in ("folder", "tiny_imagenet", "imagenet"):
      if not self.data_dir:
        raise ValueError(f"--data_dir is required with --dataset={self.dataset}.")
      if not os.path.isdir(self.data_dir):
        raise ValueError(f"--data_dir={self.data_dir!r} is not an existing directory.")
    if not self.output_dir:
      raise ValueError("--output_dir is required.")
    return self

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "Config":
    """A Config from saved values (config.json): unknown keys ignored, missing ones default;
    ValueError naming the first value of the wrong type."""
    defaults = cls()
    checked = {}
    for field in dataclasses.fields(cls):
      if field.name not in values:
        continue
      value, default = values[field.name], getattr(defaults, field.name)
      if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        cast = int if field.name == "lr_decay_epochs" else str
        try:
          value = tuple(cast(v) for v in value)
        except (TypeError, ValueError):
          value = None
      elif isinstance(default, bool):
        value = value if isinstance(value, bool) else None
      elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(default, float) or float(value).is_integer())
        value = type(default)(value) if ok else None
      elif not isinstance(value, type(default)):
        value = None
      if value is None:
        raise ValueError(f"{field.name}={values[field.name]!r} is not a valid "
                         f"{type(default).__name__} value.")
      checked[field.name] = value
    return cls(**checked)

  def as_flagfile(self) -> str:
    """The configuration as absl `--name=value` lines: rerunnable with --flagfile."""
    lines = []
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
      elif isinstance(value, bool):
        value = str(value).lower()
      lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"


def define_flags(flag_values=None):
  """Defines one absl flag per `Config` field on `flag_values` (default: absl's global FLAGS).

  Call once, from an entry point.
  """
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  defaults = Config()
  helps = {
      "dataset": "Dataset: digits (embedded, offline), folder (class-folder images in "
                 "--data_dir), cifar10 / cifar100 (TFDS), tiny_imagenet (released layout), "
                 "imagenet (train/<wnid>/, val/<wnid>/ folders; ResNet preprocessing).",
      "data_dir": "TFDS data_dir, or the root of a folder / Tiny ImageNet dataset.",
      "image_size": "Resize images to this square size (0: the dataset's native size).",
      "train_subset": "Train on a fixed random subset of N training examples (0: all).",
      "data_in_memory": "Image files: true decodes them once into memory, false decodes each "
                        "batch when it is read (datasets larger than memory), auto streams when "
                        "the decoded training set would exceed a quarter of the RAM.",
      "model": "Network: wide_resnet (CIFAR), preact_resnet18 (64x64 inputs), or any backbone "
               "wrapped into M stems and heads: keras_applications:<name> (e.g. "
               "MobileNetV3Small, random weights), keras_hub:<preset folder> or "
               "file:<backbone.keras>.",
      "depth": "WRN depth, 6n + 4 (built-in networks only; a wrapped backbone is what it is).",
      "width": "WRN / PreActResNet width multiplier (built-in networks only).",
      "num_members": "M, the number of inputs, stems and heads (1: vanilla network).",
      "mixing": "Mixing block: linear (Linear-MixMo), mimo (kappa = 1/M), cutmix (Cut-MixMo) "
                "or another registered mask shape.",
      "alpha": "Dirichlet / Beta concentration of kappa.",
      "patch_probability": "p: probability of patch (vs linear) mixing per batch, before the "
                           "decay over the last twelfth of training.",
      "weight_root": "r of the loss re-weighting w_r (Eq. 3); 1 gives weights M * kappa.",
      "batch_repetitions": "b: each unique example appears b times per step for every member.",
      "input_repetition_probability": "MIMO input repetition: fraction of slots that feed the "
                                      "same example to every member.",
      "msda": "Pixel-level mixed sample data augmentation: none, mixup or cutmix.",
      "msda_alpha": "MSDA lambda ~ Beta(msda_alpha, msda_alpha).",
      "msda_probability": "Probability that an example is MSDA-mixed.",
      "augmix": "AugMix each training image (before MSDA and mixing; docs/method.md §9).",
      "augmix_width": "AugMix chains.",
      "augmix_depth": "Maximum AugMix chain depth (uniform in 1..depth).",
      "augmix_severity": "AugMix severity (3: 10% of each op's range).",
      "batch_size": "Global batch size, counted with repetitions.",
      "epochs": "Passes over the unique training data.",
      "base_learning_rate": "LR per 128 unique examples: lr0 = base * (batch_size / b) / 128.",
      "lr_warmup_epochs": "Linear warmup length, in epochs of steps.",
      "lr_decay_epochs": "1-based epochs from which the LR is multiplied by lr_decay_ratio.",
      "lr_decay_ratio": "Multiplicative LR decay at each milestone.",
      "l2": "Coefficient of sum(theta^2) over the --l2_scope parameters, added to the loss.",
      "l2_scope": "Parameters under the L2 term: all (every trainable parameter, BN included: "
                  "the official MixMo code) or kernels (convolution and dense kernels and "
                  "biases only: uncertainty-baselines' ImageNet recipe).",
      "optimizer": "SGD momentum rule: pytorch (v <- mu v + g, the official code's; default) or "
                   "keras (LR inside the velocity; differs after every LR change).",
      "seed": "Root of every random stream (init, data order, augmentation, masks).",
      "max_steps": "Stop after this many steps (0: train all epochs).",
      "ensemble": "Ensemble prediction: logits (softmax of the mean logit, as the paper) or "
                  "probs (mean of member probabilities).",
      "corruptions": "At the end, also evaluate on corrupted test sets (docs/method.md §10.4): none, "
                     "cifar10_c (TFDS cifar10_corrupted) or cifar100_c (released .npy files).",
      "corruptions_dir": "The released CIFAR-10-C / CIFAR-100-C .npy folder (any backend), or "
                         "for cifar10_c the TFDS data_dir of cifar10_corrupted.",
      "ood": "Out-of-distribution sets scored against the test set at the end (AUROC, AUPR, "
             "FPR@95): TFDS names (cifar10, cifar100, svhn_cropped) or folder:PATH.",
      "ood_data_dir": "TFDS data_dir of the --ood sets (default: --data_dir).",
      "eval_frequency": "Evaluate on the test set every N epochs (and at the end).",
      "checkpoint_frequency": "Checkpoint every N epochs (and at the end).",
      "keep_checkpoints": "How many checkpoints to keep.",
      "log_every_steps": "Progress line and train summaries every N steps.",
      "output_dir": "Run directory: flags, checkpoints, TensorBoard, results, exported model.",
      "overwrite": "Delete an existing run in output_dir instead of resuming it.",
      "engine": "Training engine: custom (a tf.distribute custom loop, TensorFlow backend), keras "
                "(MixMoTrainer.fit, any backend) or auto (custom on TensorFlow, else keras).",
      "strategy": "Devices: auto (mirrored for the custom engine; data_parallel on JAX, else "
                  "one_device, for the keras engine); tf.distribute mirrored (visible devices), "
                  "multi_worker (TF_CONFIG) or tpu (custom engine); keras.distribution "
                  "data_parallel (every local JAX device) or one_device (keras engine).",
      "jit_compile": "XLA-compile the forward and backward pass.",
      "precision": "auto (mixed_bfloat16 on GPU/TPU and on CPUs with native bf16 under oneDNN, "
                   "else float32), float32, mixed_float16 (with loss scaling) or mixed_bfloat16. "
                   "A resumed run keeps the precision it started with.",
      "sync_batch_norm": "With several replicas, normalise with statistics of the global batch "
                         "(one GPU's statistics, as the official runs); moving statistics equal "
                         "on every replica.",
      "tpu": "TPU address for --strategy=tpu ('' for a local TPU VM).",
  }
  for field in dataclasses.fields(Config):
    name, default, help_text = field.name, getattr(defaults, field.name), helps[field.name]
    kw = dict(flag_values=flag_values)
    if isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_text, **kw)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_text, **kw)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_text, **kw)
    elif isinstance(default, tuple):
      flags.DEFINE_list(name, [str(v) for v in default], help_text, **kw)
    else:
      flags.DEFINE_string(name, default, help_text, **kw)


def config_from_flags(flag_values) -> Config:
  """Builds the frozen Config from parsed absl flag values."""
  values = {f.name: flag_values[f.name].value for f in dataclasses.fields(Config)}
  try:
    values["lr_decay_epochs"] = tuple(int(e) for e in values["lr_decay_epochs"] if str(e).strip())
  except ValueError:
    raise ValueError(f"--lr_decay_epochs={','.join(values['lr_decay_epochs'])!r} is not valid; "
                     "expected comma-separated integers.") from None
  values["ood"] = tuple(str(e).strip() for e in values["ood"] if str(e).strip())
  return Config(**values)

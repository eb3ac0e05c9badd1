"""Every flagfile in flags/ parses, holds the reference's settings, and trains a step."""

import dataclasses
import importlib.util
import pathlib

import numpy as np
import pytest
from absl import flags as absl_flags

from mixmo_tf.config import config_from_flags, define_flags
from tests.conftest import REPO
from tests.helpers import tf_engine_for, train_steps

FLAGFILES = sorted((REPO / "flags").rglob("*.flags"))


def parse(path, *extra):
  values = absl_flags.FlagValues()
  define_flags(values)
  values(["prog", f"--flagfile={path}", *extra])
  return config_from_flags(values)


def test_generated_flagfiles_are_committed_and_current():
  spec = importlib.util.spec_from_file_location("generate", REPO / "flags" / "generate.py")
  generate = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(generate)
  expected = {pathlib.Path(p): generate.render(p, s) for p, s in generate.rows()}
  for rel, text in expected.items():
    assert (REPO / "flags" / rel).read_text() == text, rel
  # Every flagfile but the quickstart's is generated (none stale, none hand-edited): 65 paper and
  # CPU rows, 5 of uncertainty-baselines' recipes.
  quickstart = pathlib.Path("quickstart.flags")
  assert set(expected) == {p.relative_to(REPO / "flags") for p in FLAGFILES} - {quickstart}
  assert len(expected) == 70 and (REPO / "flags" / quickstart).exists()


def test_paper_rows_hold_reference_settings():
  c = parse(REPO / "flags/cifar100/wrn2810-2_cutmixmo-p5_msdacutmix_bar4.flags")
  assert (c.depth, c.width, c.num_members, c.batch_repetitions, c.batch_size) == (28, 10, 2, 4, 64)
  assert (c.mixing, c.msda, c.alpha, c.weight_root, c.patch_probability) == ("cutmix", "cutmix",
                                                                           2.0, 3.0, 0.5)
  assert c.base_lr == pytest.approx(0.0125) and c.lr_decay_epochs == (101, 201, 226)
  assert c.epochs == 300 and c.l2 == 3e-4
  assert (c.optimizer, c.precision) == ("pytorch", "float32")  # as the official runs
  mimo = parse(REPO / "flags/cifar10/wrn2810-2_mimo_standard_bar2.flags")
  assert (mimo.mixing, mimo.weight_root, mimo.base_lr) == ("mimo", 1.0, pytest.approx(0.025))
  tiny = parse(REPO / "flags/tinyimagenet/res183-2_cutmixmo-p5_standard_bar4.flags")
  assert (tiny.model, tiny.width, tiny.batch_size, tiny.epochs) == ("preact_resnet18", 3, 100, 1200)
  assert tiny.base_lr == pytest.approx(0.05) and tiny.lr_decay_epochs == (600, 900)
  table4 = parse(REPO / "flags/cifar100/table4/wrn2810-2_cutmixmo-p5_standard_augmix_bar4.flags")
  assert table4.augmix and table4.corruptions == "cifar100_c" and table4.batch_repetitions == 4
  cutmix_c = parse(REPO / "flags/cifar100/table4/wrn2810_1net_msdacutmix_bar1.flags")
  assert (cutmix_c.msda, cutmix_c.num_members, cutmix_c.augmix) == ("cutmix", 1, False)
  assert cutmix_c.corruptions == "cifar100_c"
  vanilla = parse(REPO / "flags/cifar100/wrn2810_1net_standard_bar1.flags")
  assert vanilla.base_lr == pytest.approx(0.05) and vanilla.num_members == 1


def test_ub_recipes_hold_ubs_effective_values():
  """flags/ub/: the values of uncertainty-baselines' baselines/cifar/mimo.py (+ utils.py) and
  baselines/imagenet/mimo.py as this project computes them (docs/method.md §7.2): lr0, warmup
  and epoch lengths in steps, 1-based decay epochs, L2 scope, the ensemble rule, global batches."""
  from mixmo_tf.core import schedules
  for dataset in ("cifar10", "cifar100"):
    c = parse(REPO / f"flags/ub/{dataset}_wrn2810-3_mimo_bar4.flags")
    assert (c.num_members, c.batch_size, c.batch_repetitions, c.width) == (3, 512, 4, 10)
    assert (c.mixing, c.input_repetition_probability, c.epochs) == ("mimo", 0.0, 250)
    assert c.base_lr == pytest.approx(0.1)  # 0.1 x 128 unique / 128
    schedule = schedules.schedule_from_config(c, 50000)
    assert (schedule.steps_per_epoch, schedule.warmup_steps) == (390, 390)
    assert (c.lr_decay_epochs, c.lr_decay_ratio) == ((101, 201, 226), 0.2)
    assert (c.l2, c.l2_scope, c.optimizer, c.ensemble, c.seed) == (3e-4, "all", "keras",
                                                                   "probs", 42)
  for mixing in ("mimo", "linearmixmo", "cutmixmo-p5"):
    c = parse(REPO / f"flags/ub/imagenet_resnet50-2_{mixing}_bar2.flags")
    assert (c.model, c.dataset, c.image_size) == ("keras_applications:ResNet50", "imagenet2012",
                                                  224)
    assert (c.num_members, c.batch_size, c.batch_repetitions, c.epochs) == (2, 4096, 2, 150)
    assert c.base_lr == pytest.approx(0.8)  # 0.1 x 2048 unique / 256
    schedule = schedules.schedule_from_config(c, 1_281_167)
    assert (schedule.steps_per_epoch, schedule.warmup_steps) == (625, 3125)
    assert (c.lr_decay_epochs, c.lr_decay_ratio) == ((51, 101, 134), 0.1)
    assert (c.l2, c.l2_scope, c.input_repetition_probability) == (1e-4, "kernels", 0.6)
    assert (c.optimizer, c.ensemble, c.precision, c.seed) == ("keras", "probs",
                                                              "mixed_bfloat16", 0)
  assert parse(REPO / "flags/ub/imagenet_resnet50-2_cutmixmo-p5_bar2.flags").mixing == "cutmix"


SIZE_OVERRIDES = ("--dataset=digits", "--depth=10", "--width=1", "--corruptions=none",
                  "--corruptions_dir=")
# Settings that change which code the train step runs (not just a constant in it): flagfiles
# equal on these train the same graph, so one training step covers them all.
CODE_PATH_FIELDS = ("model", "depth", "width", "num_members", "mixing", "msda",
                    "batch_repetitions", "batch_size", "augmix", "augmix_width", "augmix_depth",
                    "precision", "jit_compile", "image_size", "engine", "strategy", "optimizer")


def small_config(path, output_dir):
  """A flagfile's config with only the size changed: dataset, depth/width, image size (Table 4
  rows also point at a CIFAR-100-C folder, switched off here like the dataset)."""
  config = parse(path, *SIZE_OVERRIDES, f"--output_dir={output_dir}")
  if config.model == "preact_resnet18":
    config = dataclasses.replace(config, image_size=16)
  if config.model.startswith("keras_applications:"):  # At least 32 px for keras.applications.
    config = dataclasses.replace(config, image_size=32)
  if config.batch_size > 128:  # UB's global batches (512, 4096): more than the digits hold.
    config = dataclasses.replace(config, batch_size=8 * config.batch_repetitions)
  return config


def code_path(config):
  return tuple(getattr(config, f) for f in CODE_PATH_FIELDS) + (
      config.l2 > 0, config.input_repetition_probability > 0)


def augmix_code_path(config):
  """An AugMix row's code path without its mixing block. AugMix transforms each member's images
  before anything is mixed (`core.step.member_batch`, docs/method.md §9) and does not depend on
  the mixing block, which that row's twin without AugMix trains. So AugMix rows that differ only
  in the mixing share one step (the slowest graphs here: three AugMix chains per image)."""
  return code_path(dataclasses.replace(config, mixing="any"))


def _groups():
  groups = {}
  for path in FLAGFILES:
    config = small_config(path, "/tmp/unused")
    # The ResNet-50 rows differ only in their mixing block, which the CIFAR rows and
    # tests/test_backbone.py (every method through a wrapped network) train: one step for all.
    wrapped = config.model.startswith("keras_applications:")
    key = augmix_code_path(config) if config.augmix or wrapped else code_path(config)
    groups.setdefault(key, []).append(path)
  return list(groups.values())


GROUPS = _groups()


def test_every_flagfile_validates():
  for path in FLAGFILES:
    small_config(path, "/tmp/unused").validate()
  assert sum(len(g) for g in GROUPS) == len(FLAGFILES) and len(GROUPS) < len(FLAGFILES)


def test_every_augmix_rows_mixing_is_trained_by_its_twin_without_augmix():
  """What sharing the AugMix rows' step leaves out, each row's mixing block with the rest of its
  settings, is trained by a group of its own: the row without AugMix."""
  trained = {code_path(small_config(g[0], "/tmp/unused")) for g in GROUPS}
  augmix_rows = [p for p in FLAGFILES if small_config(p, "/tmp/unused").augmix]
  assert len(augmix_rows) == 4 and len({m for g in GROUPS for m in g} & set(augmix_rows)) == 4
  for path in augmix_rows:
    twin = dataclasses.replace(small_config(path, "/tmp/unused"), augmix=False)
    assert code_path(twin) in trained, path


@pytest.mark.parametrize("paths", GROUPS, ids=lambda g: str(g[0].relative_to(REPO / "flags")))
def test_flagfile_trains_a_step(paths, tmp_path):
  """One real training step (the tf.distribute engine, as `python -m mixmo_tf.train` runs it) from
  the first flagfile of each group of same-code flagfiles: a finite loss, and every weight finite
  with the trainable ones moved by the update."""
  engine, data, folder = tf_engine_for(small_config(paths[0], tmp_path))
  try:
    before = [w.numpy() for w in engine.network.trainable_weights]
    [(loss, accuracy)] = train_steps(engine, data, 1)
  finally:
    folder.release()
  assert engine.global_step == 1 and np.isfinite(loss) and 0.0 <= accuracy <= 1.0
  after = [w.numpy() for w in engine.network.trainable_weights]
  assert all(np.all(np.isfinite(w)) for w in after)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(after, before))
  assert moved > 0.0, "the step did not update the weights"

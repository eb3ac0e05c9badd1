"""Every flagfile in flags/ parses, holds the reference's settings, and trains two steps."""

import dataclasses
import importlib.util
import pathlib

import numpy as np
import pytest
from absl import flags as absl_flags

from mixmo_tf import custom_loop
from mixmo_tf.config import config_from_flags, define_flags
from tests.conftest import REPO

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
  assert len(expected) == 65 and len(FLAGFILES) == 66  # + quickstart.flags


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


SIZE_OVERRIDES = ("--dataset=digits", "--depth=10", "--width=1", "--max_steps=2",
                  "--corruptions=none")
# Settings that change which code the train step runs (not just a constant in it): flagfiles
# equal on these train the same graph, so one two-step run covers them all.
CODE_PATH_FIELDS = ("model", "depth", "width", "num_members", "mixing", "msda",
                    "batch_repetitions", "batch_size", "augmix", "precision", "jit_compile",
                    "image_size", "strategy")


def small_config(path, output_dir):
  """A flagfile's config with only the size changed: dataset, depth/width, image size (Table 4
  rows also point at a CIFAR-100-C folder, switched off here like the dataset)."""
  config = parse(path, *SIZE_OVERRIDES, f"--output_dir={output_dir}")
  if config.model == "preact_resnet18":
    config = dataclasses.replace(config, image_size=16)
  return config


def code_path(config):
  return tuple(getattr(config, f) for f in CODE_PATH_FIELDS) + (
      config.l2 > 0, config.input_repetition_probability > 0)


def _groups():
  groups = {}
  for path in FLAGFILES:
    groups.setdefault(code_path(small_config(path, "/tmp/unused")), []).append(path)
  return list(groups.values())


GROUPS = _groups()


def test_every_flagfile_validates():
  for path in FLAGFILES:
    small_config(path, "/tmp/unused").validate()
  assert sum(len(g) for g in GROUPS) == len(FLAGFILES) and len(GROUPS) < len(FLAGFILES)


@pytest.mark.parametrize("paths", GROUPS, ids=lambda g: str(g[0].relative_to(REPO / "flags")))
def test_flagfile_trains_two_steps(paths, tmp_path):
  """Two real training steps from the first flagfile of each group of same-code flagfiles."""
  trainer = custom_loop.build_trainer(small_config(paths[0], tmp_path))
  trainer.train_epoch(0, 0)
  assert trainer.global_step == 2 and np.all(np.isfinite(trainer.loss_history))

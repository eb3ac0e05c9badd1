"""Step-level equivalence with the official MixMo PyTorch code (issue 28, items 1 and 2).

    python benchmarks/official_equivalence.py --official_dir=PATH [--json=PATH] [--seed=0]
        [--draws=20000] [--batches=2000] [--init_draws=4] [--rtol=1e-5]
        [--normalisation=ours|official] [--skip_steps] [--skip_float64] [--skip_distributions]

PATH is a checkout of alexrame/mixmo-pytorch (the official code; nothing of it lives in this
repository) and torch must be installed. Its small dependencies are used when importable and
replaced by stand-ins otherwise (the header lists which): easydict, coloredlogs, verboselogs; for
torchvision, a wheel whose package __init__ cannot load (e.g. a CUDA build beside a CPU torch) is
bypassed and its real `transforms` submodule used, and only without any torchvision at all do
stand-in transforms (the same rules) replace it. `np.int` is restored for NumPy 2 and the
official `mixmo.loaders` package is imported without its __init__ (which needs
torchvision.datasets). Ours runs on the TensorFlow backend on the CPU, float32 (and float64 for
the check of (A)).

(A) Steps. The official WRN-28-1 on CIFAR-10 (their classes, built from their own config files
    `config/cifar10/exp_cifar10_*.yaml`, widen_factor set to 1) and ours
    (`models.build_model("wide_resnet", depth=28, width=1, ...)`) start from the same weights
    (theirs, copied across: OIHW -> HWIO kernels, BN, heads). Three steps of Cut-MixMo (M = 2,
    b = 4; a patch batch, a linear batch, a patch batch), Linear-MixMo (M = 2, b = 4) and vanilla
    (M = 1, b = 1), batch 64 counted with repetitions, with the learning rate of a 2-step warmup
    then a x0.1 decay (lr0/2, lr0, lr0/10; lr0 from each side's own config). The shared draws
    (images, repetition table, per-copy crops and flips, masks, kappa, the per-batch coin and role
    swap) come from our `core.step.member_batch`, drawn once and handed to both as NumPy: ours
    gets them through `training.tf_engine.apply_step`; theirs through their own
    BatchRepetitionSampler, MixMoDataset / MSDADataset, DataLoader collate, Learner and
    ModelWrapper (loss, SGD, warmup and milestone schedulers), with only their random sources
    (torch.randperm, the batch seed, NumPy's Dirichlet and box centre) and the dataset's crops
    replaced by ours. Compared per step: learning rate, member inputs, masks, kappa, w_r-weighted
    targets, mixed features (the mixing block's output), BN batch statistics, member logits, the
    L2 term, the loss with L2, every gradient, BN moving statistics, SGD momentum buffers,
    weights and their change since the start; after the 3 steps, inference logits. Relative error
    = max|ours - theirs| / max|theirs| per tensor, compared with --rtol. Each run is made in
    float32 and, unless --skip_float64, again in float64 on both sides (theirs:
    `network.double()`; ours: the float64 Keras policy, with FusedBatchNorm's equations evaluated
    in float64 since TensorFlow's fused kernel has none; both losses keep their float32 casts):
    a float64 difference over rtol means the two codes compute different functions
    ("DIFFERENT"), a float32-only one is rounding ("float32 rounding"), sized by the columns
    "rnd ours" / "rnd OFF" (each code's float32 against its own float64). Their masks run twice:
    as released (stored in float16) and with float32 masks put back in their collated batch,
    which isolates that one difference. --normalisation=official gives our inputs their mean and
    std, isolating the other known one.
(B) Settings, deterministic: the paper-row settings of our flagfiles against their YAML files,
    the learning rate of every step of three full runs, p(e) for every epoch, normalisation
    constants, BN momentum / epsilon.
(C) Distributions, two-sample tests (KS for continuous, chi-square for discrete quantities),
    each p-value printed; p < 0.001 is a difference to explain: initial weights per layer (with
    the constant initial values and the count of weights beyond 2 std), crop offsets and flips,
    Dirichlet draws, linear kappa, Cut-MixMo's realised kappa, box sizes and positions, the
    per-batch role swap, the patch / linear choice at several p, and the number of self-paired
    slots per batch.

--json=PATH writes every row: {"env", "steps": [...], "settings": [...], "distributions": [...],
"summary"}. Exit status 0 whatever the findings (they are the output), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.util
import itertools
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import types

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# The steps' setting: WRN-28-1, CIFAR-10, batch 64 with repetitions, 3 steps over a 2-step warmup
# and a x0.1 decay at the second "epoch" (2 steps per epoch): lr0 / 2, lr0, lr0 / 10.
DEPTH, WIDTH, NUM_CLASSES, IMAGE_SIZE, PADDING = 28, 1, 10, 32, 4
BATCH_SIZE, STEPS, STEPS_PER_EPOCH, WARMUP_STEPS, MILESTONE, DECAY = 64, 3, 2, 2, 2, 0.1
NUM_EPOCHS = 300  # The official configs' nb_epochs: p(e) uses e / 300.
TRAIN_SIZE = 50000
P_VALUE_LEVEL = 1e-3
# Each compared method: our StepSpec's settings, their config file and the per-step p given to
# `member_batch` (Cut-MixMo: a patch batch, a linear batch, a patch batch).
METHODS = {
    "cut-mixmo": dict(num_members=2, mixing="cutmix", repetitions=4, p=(1.0, 0.0, 1.0),
                      official="exp_cifar10_wrn2810-2_cutmixmo-p5_standard_bar4.yaml",
                      flags="wrn2810-2_cutmixmo-p5_standard_bar4.flags"),
    "linear-mixmo": dict(num_members=2, mixing="linear", repetitions=4, p=(0.0,) * 3,
                         official="exp_cifar10_wrn2810-2_linearmixmo_standard_bar4.yaml",
                         flags="wrn2810-2_linearmixmo_standard_bar4.flags"),
    "vanilla": dict(num_members=1, mixing="linear", repetitions=1, p=(0.0,) * 3,
                    official="exp_cifar10_wrn2810_1net_standard_bar1.yaml",
                    flags="wrn2810_1net_standard_bar1.flags"),
}
MASK_MODES = ("float16 masks (as released)", "float32 masks")
# Their CIFAR loader's `properties` (mixmo/loaders/loader.py, not importable without
# torchvision.datasets): the stems' output grid and flags the dataset wrapper reads.
CIFAR_PROPERTIES = {"conv1_input_size": (16, 32, 32), "conv1_is_half_size": False,
                    "pixels_size": 32}
SEED_OFFSET_MIXMO = 11  # Their cfg.RANDOM.SEED_OFFSET_MIXMO (checked against it at run time).

# ------------------------------------------------------------------------------------------------
# Weight layouts (torch-free): their state_dict keys and layouts <-> our Keras weights.

_BLOCK = re.compile(r"group(\d+)_block(\d+)_(bn1|bn2|conv1|conv2|shortcut)$")
BN_FIELDS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
             ("running_var", "moving_variance"))


def official_layout(model):
  """[(their key, our layer, our weight, kind, member)] for every weight of our WideResNet.

  Their names (mixmo/networks/wrn.py): `list_conv1.i` / `conv1` stems, `layer{g}.{b}.bn1|conv1|
  bn2|conv2|shortcut.0` blocks, `bn1` the final BN, `list_fc.i` / `fc` heads (M > 1 / M = 1).
  Kinds: "conv" (OIHW there, HWIO here), "vector" (BN), "dense_kernel" / "dense_bias" (member i
  of our [M, D, K] / [M, K] heads; [K, D] / [K] there).
  """
  members = model.num_members
  rows = []
  for layer in model.layers:
    if not layer.weights:
      continue
    name = layer.name
    if name.startswith("stem_"):
      key = f"list_conv1.{int(name[5:])}.weight" if members > 1 else "conv1.weight"
      rows.append((key, name, "kernel", "conv", None))
      continue
    if name == "heads":
      for i in range(members):
        prefix = f"list_fc.{i}" if members > 1 else "fc"
        rows.append((f"{prefix}.weight", name, "kernel", "dense_kernel", i))
        rows.append((f"{prefix}.bias", name, "bias", "dense_bias", i))
      continue
    if name == "final_bn":
      prefix, part = "bn1", "bn"
    else:
      match = _BLOCK.match(name)
      if not match:
        raise ValueError(f"Layer {name!r} has no counterpart in the official WideResNet.")
      group, block, part = match.groups()
      prefix = f"layer{group}.{int(block) - 1}.{'shortcut.0' if part == 'shortcut' else part}"
    if part.startswith("bn"):
      rows.extend((f"{prefix}.{theirs}", name, ours, "vector", None) for theirs, ours in BN_FIELDS)
    else:
      rows.append((f"{prefix}.weight", name, "kernel", "conv", None))
  return rows


def to_official(array, kind, member=None):
  """One of our weights (or of their gradients, momenta...) in their layout."""
  array = np.asarray(array)
  if kind == "conv":
    return np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
  if kind == "dense_kernel":
    return np.transpose(array[member])  # [M, D, K] -> member's [K, D]
  if kind == "dense_bias":
    return array[member]
  return array


def from_official(array, kind):
  """Their layout -> ours, for one tensor (a head member's slice for the dense kinds)."""
  array = np.asarray(array)
  if kind == "conv":
    return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
  if kind == "dense_kernel":
    return np.transpose(array)
  return array


def _weights_by_name(layer):
  return {w.name: w for w in layer.weights}


def official_values(model, values=None):
  """{their key: array in their layout} of our model's weights, or of `values` ({our variable
  path "layer/weight": array}, e.g. gradients or momenta), for the keys `values` covers."""
  out = {}
  for key, layer, weight, kind, member in official_layout(model):
    if values is None:
      array = _weights_by_name(model.get_layer(layer))[weight].numpy()
    elif f"{layer}/{weight}" in values:
      array = values[f"{layer}/{weight}"]
    else:
      continue
    out[key] = to_official(array, kind, member)
  return out


def load_official(model, state):
  """Assigns their state_dict (NumPy, their layout) to our model: the weights copied across."""
  heads = {}
  for key, layer, weight, kind, member in official_layout(model):
    if key not in state:
      raise KeyError(f"The official state has no {key!r}.")
    value = from_official(state[key], kind)
    variable = _weights_by_name(model.get_layer(layer))[weight]
    if kind in ("dense_kernel", "dense_bias"):
      heads.setdefault(weight, np.array(variable.numpy()))[member] = value
      continue
    if tuple(variable.shape) != value.shape:
      raise ValueError(f"{key}: shape {value.shape} for our {layer}/{weight} {variable.shape}.")
    variable.assign(value.astype(np.float32))
  for weight, value in heads.items():
    _weights_by_name(model.get_layer("heads"))[weight].assign(value.astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Comparison and test helpers (torch-free).


def relative_error(ours, theirs):
  """(max |ours - theirs|, that / max |theirs|), in float64; shapes must agree. 0 / 0 is 0."""
  a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: ours {a.shape}, theirs {b.shape}")
  if not a.size:
    return 0.0, 0.0
  diff = float(np.max(np.abs(a - b)))
  scale = float(np.max(np.abs(b)))
  if scale == 0.0:
    return diff, (0.0 if diff == 0.0 else math.inf)
  return diff, diff / scale


def compare(quantity, pairs, rtol, step=None):
  """Rows {quantity, name, step, max_abs, rel, ok} of (name, ours, theirs) pairs."""
  rows = []
  for name, ours, theirs in pairs:
    max_abs, rel = relative_error(ours, theirs)
    rows.append(dict(quantity=quantity, name=name, step=step, max_abs=max_abs, rel=rel,
                     ok=bool(rel <= rtol)))
  return rows


def combine(pairs_rows, rtol):
  """Joins the row lists of one run compared four ways, all from `compare_steps`: ours / theirs
  in float32, ours float32 / float64, theirs float32 / float64, ours / theirs in float64 (the last
  three may be None). Each row gets `rounding_ours`, `rounding_theirs` (each code's own float32
  rounding, relative), `rel64` and a verdict: "DIFFERENT" when the float64 runs differ by more
  than rtol (the two codes compute different functions), else "equal" when the float32 runs agree
  within rtol, else "float32 rounding"."""
  rows, ours_rounding, theirs_rounding, float64 = pairs_rows
  for k, row in enumerate(rows):
    for other in (ours_rounding, theirs_rounding, float64):
      if other is not None and (other[k]["quantity"], other[k]["name"], other[k]["step"]) != (
          row["quantity"], row["name"], row["step"]):
        raise ValueError(f"rows differ at {row['quantity']} / {row['name']}")
    row["rounding_ours"] = ours_rounding[k]["rel"] if ours_rounding else None
    row["rounding_theirs"] = theirs_rounding[k]["rel"] if theirs_rounding else None
    if float64 is None:
      row["rel64"] = None
      row["verdict"] = "equal" if row["ok"] else "over rtol"
      continue
    row["rel64"], row["max_abs64"] = float64[k]["rel"], float64[k]["max_abs"]
    row["verdict"] = ("DIFFERENT" if row["rel64"] > rtol else
                      "equal" if row["ok"] else "float32 rounding")
  return rows


def first_difference(rows, verdict=None):
  """The first row (pipeline order: rows are appended in that order) over the tolerance, or with
  the given verdict; None if there is none."""
  if verdict is None:
    return next((row for row in rows if not row["ok"]), None)
  return next((row for row in rows if row.get("verdict") == verdict), None)


VERDICTS = ("equal", "float32 rounding", "over rtol", "DIFFERENT")


def summarise(rows):
  """One row per quantity, in first-seen order: the worst float32 relative error and where it
  was, the largest rounding errors and float64 difference over its tensors, the worst verdict."""
  out = {}
  for row in rows:
    best = out.get(row["quantity"])
    if best is None:
      out[row["quantity"]] = dict(row, tensors=1)
      continue
    merged = dict(row) if row["rel"] > best["rel"] else dict(best)
    merged["tensors"] = best["tensors"] + 1
    for key in ("rounding_ours", "rounding_theirs", "rel64"):
      if row.get(key) is not None:
        merged[key] = max(best[key], row[key])
    merged["verdict"] = max(best["verdict"], row["verdict"], key=VERDICTS.index)
    out[row["quantity"]] = merged
  return list(out.values())


def ks_pvalue(ours, theirs):
  """Two-sample Kolmogorov-Smirnov p-value (continuous quantities)."""
  from scipy import stats
  return float(stats.ks_2samp(np.ravel(ours), np.ravel(theirs)).pvalue)


def chi2_pvalue(ours, theirs, min_expected=5.0):
  """Chi-square p-value of the 2 x K table of counts of each value (discrete quantities).

  Adjacent values (in sorted order) are pooled until every expected count is >= min_expected;
  one category left (e.g. both samples constant and equal) gives 1.0.
  """
  from scipy import stats
  ours, theirs = np.ravel(ours), np.ravel(theirs)
  values = np.union1d(ours, theirs)
  counts = np.stack([[np.sum(ours == v) for v in values], [np.sum(theirs == v) for v in values]])
  total = counts.sum()
  need = min_expected * total / counts.sum(axis=1).min()  # column total giving expected >= min
  bins, current = [], np.zeros(2, np.int64)
  for column in counts.T:
    current = current + column
    if current.sum() >= need:
      bins.append(current)
      current = np.zeros(2, np.int64)
  if current.sum():
    if bins:
      bins[-1] = bins[-1] + current
    else:
      bins.append(current)
  if len(bins) < 2:
    return 1.0
  return float(stats.chi2_contingency(np.stack(bins, axis=1), correction=False).pvalue)


# ------------------------------------------------------------------------------------------------
# Boxes (torch-free): reading a binary mask, and their box procedure in NumPy.


def box_of(mask):
  """(top, left, height, width) of the ones of a 2-D binary mask when they fill a rectangle
  ((0, 0, 0, 0) for no ones), else None."""
  ones = np.asarray(mask) > 0.5
  if not ones.any():
    return (0, 0, 0, 0)
  rows, cols = np.flatnonzero(ones.any(axis=1)), np.flatnonzero(ones.any(axis=0))
  top, left = int(rows[0]), int(cols[0])
  height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
  if ones.sum() != height * width or not ones[top:top + height, left:left + width].all():
    return None
  return (top, left, height, width)


def box_member(masks):
  """Which member holds the patch in each example of a 2-member binary batch [N, 2, H, W]: the
  one whose mask is a rectangle that does not fill the grid (an empty box counts as member 0's
  unless member 0's mask fills the grid); -1 where neither does."""
  out = []
  for pair in np.asarray(masks):
    found = -1
    for member in range(2):
      box = box_of(pair[member])
      if box is not None and box[2] * box[3] < pair[member].size:
        found = member
        break
    out.append(found)
  return np.array(out)


def official_box_mask(lam, row_centre, col_centre, size=IMAGE_SIZE):
  """Their `_rand_bbox_of_area_lam` + `_cutmix_mask` (mixmo/augmentations/mixing_blocks.py) for
  given draws, in NumPy: sides int(S sqrt(lam)), corners centre -/+ side // 2 clipped to [0, S]."""
  side = int(size * np.sqrt(lam))
  r1, r2 = np.clip(row_centre - side // 2, 0, size), np.clip(row_centre + side // 2, 0, size)
  c1, c2 = np.clip(col_centre - side // 2, 0, size), np.clip(col_centre + side // 2, 0, size)
  mask = np.zeros((size, size), np.float32)
  mask[r1:r2, c1:c2] = 1.0
  return mask


def official_box_draws(box, size=IMAGE_SIZE):
  """(lam, row centre, col centre) that their procedure turns into `box` (top, left, height,
  width), or None if it cannot produce that box. lam = ((2h + 1/2) / S)^2 gives half side h."""
  top, left, height, width = box
  if height == 0 or width == 0:
    return ((0.5 / size) ** 2, 0, 0)
  centres = np.arange(size)
  for half in range(1, size // 2 + 1):
    row_ok = ((np.clip(centres - half, 0, size) == top)
              & (np.clip(centres + half, 0, size) == top + height))
    col_ok = ((np.clip(centres - half, 0, size) == left)
              & (np.clip(centres + half, 0, size) == left + width))
    if row_ok.any() and col_ok.any():
      lam = ((2 * half + 0.5) / size) ** 2
      return (float(lam), int(np.flatnonzero(row_ok)[0]), int(np.flatnonzero(col_ok)[0]))
  return None


# ------------------------------------------------------------------------------------------------
# The shared draws (torch-free): ours draws them once; both codes get them as NumPy.


def step_spec(method, mean, std):
  """Our StepSpec for one of METHODS (WRN-28-1 CIFAR-10 settings, L2 3e-4, r = 3, alpha = 2)."""
  from mixmo_tf.core import step as step_lib
  settings = METHODS[method]
  return step_lib.StepSpec(
      num_members=settings["num_members"], batch_repetitions=settings["repetitions"],
      input_repetition_probability=0.0, mixing=settings["mixing"], alpha=2.0, weight_root=3.0,
      msda="none", msda_alpha=1.0, msda_probability=0.5, global_batch_size=BATCH_SIZE,
      l2=3e-4, num_replicas=1, num_classes=NUM_CLASSES, crop_padding=PADDING, flip=True,
      mean=tuple(mean), std=tuple(std), mask_shape=(IMAGE_SIZE, IMAGE_SIZE))


def official_permutations(indices, repetitions):
  """Their BatchRepetitionSampler's M torch.randperm results that reproduce our [M, B] table.

  Their batch lists each unique index b times in a row; member 0's slot j shows
  std[perm_0[j]], member i's slot j shows shuffled[perm_i[j]] with shuffled = std[perm_0].
  """
  indices = np.asarray(indices)
  std = np.repeat(np.arange(indices.max() + 1), repetitions)

  def positions(source, wanted):
    free = {}
    for position, value in enumerate(source):
      free.setdefault(int(value), []).append(position)
    return np.array([free[int(value)].pop(0) for value in wanted], np.int64)

  perms = [positions(std, indices[0])]
  shuffled = std[perms[0]]
  perms += [positions(shuffled, row) for row in indices[1:]]
  return perms


def official_batch_seed(use_patch, swap, prob, coin, offset=SEED_OFFSET_MIXMO, start=1):
  """A batch seed s for which their per-batch draws agree with ours: random.Random(s).uniform
  (0, 1) < prob is the patch choice (when `coin`: their method differs from its replacement) and
  random.Random(s + offset).shuffle of the (mask, ratio) pairs swaps them iff `swap`."""
  for seed in itertools.count(start):
    if coin:
      patch = prob > 0 and random.Random(seed).uniform(0, 1) < prob
      if patch != use_patch:
        continue
    order = [0, 1]
    random.Random(seed + offset).shuffle(order)
    if (order == [1, 0]) == swap:
      return seed


def shared_draws(method, seed, mean, std, steps=STEPS):
  """The `steps` batches both codes train on, drawn once by our `core.step.member_batch`, as NumPy.

  Per step: the unique batch (uint8 noise images, labels), the [M, B] repetition table, each
  copy's crop (uint8, recovered from its normalised input), the inputs, one-hot targets, masks,
  kappa, whether it is a patch batch and whether the roles are swapped; and what their code needs
  to draw the same: torch.randperm results, per-slot Dirichlet pairs and box centres, a batch
  seed. Raises ValueError where their procedure cannot reproduce one of our boxes.
  """
  import tensorflow as tf

  from mixmo_tf.core import seeds
  from mixmo_tf.core import step as step_lib
  spec = step_spec(method, mean, std)
  settings = METHODS[method]
  unique = BATCH_SIZE // spec.batch_repetitions
  root = tf.constant(seeds.step_root(seed))
  draws = []
  for k in range(steps):
    generator = np.random.default_rng([seed, k])
    images = generator.integers(0, 256, (unique, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = generator.integers(0, NUM_CLASSES, unique).astype(np.int32)
    replica_seed, batch_seed = step_lib.step_seeds(root, k, 0)
    batch = step_lib.member_batch(spec, tf.constant(images), tf.constant(labels), (),
                                  replica_seed, batch_seed, settings["p"][k])
    inputs = [x.numpy() for x in batch.inputs]
    pixels = [(x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
              for x in inputs]
    crops = np.stack([np.round(x) for x in pixels]).astype(np.uint8)
    if max(float(np.max(np.abs(x - np.round(x)))) for x in pixels) > 1e-2:
      raise ValueError("The inputs are not normalised uint8 crops.")
    masks, kappa = batch.masks.numpy(), batch.kappa.numpy()
    draw = dict(images=images, labels=labels, indices=batch.indices.numpy(), crops=crops,
                inputs=inputs, targets=batch.targets.numpy(), masks=masks, kappa=kappa,
                use_patch=False, swap=False, p=settings["p"][k])
    if spec.num_members > 1:
      binary = bool(np.all((masks == 0.0) | (masks == 1.0)))
      draw["use_patch"] = binary and spec.mixing != "linear"
      if draw["use_patch"]:
        holders = box_member(masks[..., 0])
        if (holders < 0).any() or len(set(holders.tolist())) > 1:
          raise ValueError(f"step {k}: no single member holds the boxes ({holders}).")
        draw["swap"] = bool(holders[0] == 1)
        lams, centres = [], []
        for j in range(len(holders)):
          found = official_box_draws(box_of(masks[j, holders[0], :, :, 0]))
          if found is None:
            raise ValueError(f"step {k}, slot {j}: their procedure cannot draw our box "
                             f"{box_of(masks[j, holders[0], :, :, 0])}.")
          lams.append((found[0], 1.0 - found[0]))
          centres.append(found[1:])
        draw["official_lams"], draw["official_centres"] = lams, centres
      else:  # Linear: their Dirichlet pair is our (kappa_0, kappa_1), unswapped.
        draw["official_lams"] = [tuple(float(v) for v in row) for row in kappa]
        draw["official_centres"] = []
    draw["official_perms"] = official_permutations(draw["indices"], spec.batch_repetitions)
    draw["official_batch_seed"] = official_batch_seed(
        draw["use_patch"], draw["swap"], 0.5, coin=spec.mixing == "cutmix")
    draws.append(draw)
  return draws


# ------------------------------------------------------------------------------------------------
# The official code: imports, shims and stand-ins.


def _standin_module(name, **attributes):
  module = types.ModuleType(name)
  module.__dict__.update(attributes)
  module.__standin__ = True
  return module


def _standin_torchvision():
  """torchvision.transforms' rules for the four transforms the official CIFAR path uses (only
  when no torchvision is installed): RandomCrop (zero padding, offsets torch.randint(0, 2p + 1)),
  RandomHorizontalFlip (torch.rand(1) < p), ToTensor (/ 255, CHW), Normalize."""
  import torch
  from PIL import Image, ImageOps

  class Compose:
    def __init__(self, transforms):
      self.transforms = transforms

    def __call__(self, img):
      for t in self.transforms:
        img = t(img)
      return img

  class RandomCrop:
    def __init__(self, size, padding=0):
      self.size, self.padding = size, padding

    def __call__(self, img):
      img = ImageOps.expand(img, border=self.padding, fill=0)
      w, h = img.size
      i = int(torch.randint(0, h - self.size + 1, size=(1,)).item())
      j = int(torch.randint(0, w - self.size + 1, size=(1,)).item())
      return img.crop((j, i, j + self.size, i + self.size))

  class RandomHorizontalFlip:
    def __init__(self, p=0.5):
      self.p = p

    def __call__(self, img):
      return img.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img

  class ToTensor:
    def __call__(self, img):
      return torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1).contiguous()

  class Normalize:
    def __init__(self, mean, std):
      self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
      self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, x):
      return (x - self.mean) / self.std

  transforms = _standin_module("torchvision.transforms", Compose=Compose, RandomCrop=RandomCrop,
                               RandomHorizontalFlip=RandomHorizontalFlip, ToTensor=ToTensor,
                               Normalize=Normalize)
  return _standin_module("torchvision", transforms=transforms), transforms


def import_official(official_dir):
  """Imports the official modules the comparison drives; returns (namespace, notes), the notes
  saying which shims and stand-ins were needed."""
  import collections
  import logging

  import torch
  notes = []
  if not hasattr(np, "int"):
    np.int = int  # Removed in NumPy 1.24; their box code calls np.int.
    notes.append("np.int = int (NumPy 2)")
  lr_scheduler = importlib.import_module("torch.optim.lr_scheduler")
  if not hasattr(lr_scheduler, "Counter"):
    lr_scheduler.Counter = collections.Counter
    notes.append("torch.optim.lr_scheduler.Counter = collections.Counter")
  if importlib.util.find_spec("easydict") is None:
    class EasyDict(dict):
      def __getattr__(self, name):
        return self[name]

      def __setattr__(self, name, value):
        self[name] = value

    sys.modules["easydict"] = _standin_module("easydict", EasyDict=EasyDict)
    notes.append("easydict: stand-in")
  if importlib.util.find_spec("verboselogs") is None:
    sys.modules["verboselogs"] = _standin_module("verboselogs", install=lambda: None)
    notes.append("verboselogs: stand-in")
  if importlib.util.find_spec("coloredlogs") is None:
    sys.modules["coloredlogs"] = _standin_module(
        "coloredlogs", install=lambda level=None, logger=None, **_: (logger or logging.getLogger())
        .setLevel(level or "INFO"))
    notes.append("coloredlogs: stand-in")
  try:
    import torchvision  # noqa: F401
    notes.append(f"torchvision {torchvision.__version__}")
  except Exception:  # A wheel whose C extension cannot load (CUDA build beside a CPU torch).
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations:
      package = types.ModuleType("torchvision")
      package.__path__ = list(spec.submodule_search_locations)
      sys.modules["torchvision"] = package
      importlib.import_module("torchvision.transforms")
      notes.append("torchvision: package __init__ bypassed, its real transforms used")
    else:
      package, transforms = _standin_torchvision()
      sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, transforms
      notes.append("torchvision: STAND-IN transforms (crop/flip test compares a transcription)")
  try:
    importlib.import_module("torch.utils.tensorboard")
  except Exception:
    sys.modules["torch.utils.tensorboard"] = _standin_module(
        "torch.utils.tensorboard", SummaryWriter=object)
    notes.append("torch.utils.tensorboard: stand-in")
  os.environ.setdefault("MPLBACKEND", "Agg")
  official_dir = os.path.abspath(official_dir)
  if not os.path.isfile(os.path.join(official_dir, "mixmo", "networks", "wrn.py")):
    raise FileNotFoundError(f"{official_dir} is not a checkout of alexrame/mixmo-pytorch "
                            "(no mixmo/networks/wrn.py).")
  sys.path.insert(0, official_dir)
  importlib.import_module("mixmo")
  loaders = types.ModuleType("mixmo.loaders")  # Its __init__ imports torchvision.datasets.
  loaders.__path__ = [os.path.join(official_dir, "mixmo", "loaders")]
  sys.modules["mixmo.loaders"] = loaders
  notes.append("mixmo.loaders imported without its __init__")
  names = dict(config="mixmo.utils.config", misc="mixmo.utils.misc",
               torchutils="mixmo.utils.torchutils", mixing="mixmo.augmentations.mixing_blocks",
               augmentations="mixmo.augmentations.standard_augmentations",
               wrapper="mixmo.loaders.dataset_wrapper",
               sampler="mixmo.loaders.batch_repetition_sampler", networks="mixmo.networks",
               model_wrapper="mixmo.learners.model_wrapper", learner="mixmo.learners.learner")
  off = types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})
  off.torch, off.dir = torch, official_dir
  for name in list(logging.root.manager.loggerDict):
    if name.startswith("mixmo"):
      logging.getLogger(name).setLevel(logging.ERROR)
  if off.config.cfg.RANDOM.SEED_OFFSET_MIXMO != SEED_OFFSET_MIXMO:
    raise ValueError("Their SEED_OFFSET_MIXMO changed; update SEED_OFFSET_MIXMO.")
  return off, notes


def official_commit(official_dir):
  try:
    return subprocess.run(["git", "-C", official_dir, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except Exception:
    return "unknown (not a git checkout)"


def official_config(off, method):
  """Their config for `method`, read from their own YAML file, changed only where the comparison
  needs it: widen_factor 1, warmup_period 2, milestone {2: 0.1}."""
  path = os.path.join(off.dir, "config", "cifar10", METHODS[method]["official"])
  config = off.misc.load_config_yaml(path)
  config["model_wrapper"]["network"]["widen_factor"] = WIDTH
  config["model_wrapper"]["network"]["depth"] = DEPTH
  config["model_wrapper"]["warmup_period"] = WARMUP_STEPS
  config["model_wrapper"]["lr_schedule"]["params"]["dict_milestone_to_gamma"] = {MILESTONE: DECAY}
  return config


class _CropQueue:
  """Stands for their CIFAR dataset inside their dataset wrapper: hands out our crops in the
  order their wrapper asks for them (slot j, then member i), through their test-time transform
  (ToTensor + Normalize, the end of their train transform), checking every index."""

  def __init__(self, draw, post):
    from PIL import Image
    members = draw["indices"].shape[0]
    order = [(j, i) for j in range(draw["indices"].shape[1]) for i in range(members)]
    self.items = [(int(draw["indices"][i, j]), Image.fromarray(draw["crops"][i, j]))
                  for j, i in order]
    self.labels, self.post = draw["labels"], post

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    expected, image = self.items.pop(0)
    if index != expected:
      raise AssertionError(f"their wrapper asked for example {index}, ours shows {expected}")
    return self.post(image), int(self.labels[index])


class _Centres:
  """Their box centres: each randint call returns our next centre coordinate."""

  def __init__(self, values):
    self.values = list(values)

  def randint(self, high):
    value = self.values.pop(0)
    assert 0 <= value < high
    return value


def official_batch(off, wrapper, config, draw):
  """Their collated batch for one draw: BatchRepetitionSampler -> wrapper -> DataLoader collate,
  with their random sources returning our draws."""
  from unittest import mock

  import torch
  members = draw["indices"].shape[0]
  unique = len(draw["labels"])
  post = off.augmentations.get_default_composed_augmentations("cifar")[1]
  wrapper.dataset = _CropQueue(draw, post)
  sampler = off.sampler.BatchRepetitionSampler(
      sampler=range(unique), batch_size=BATCH_SIZE, num_members=members,
      config_batch_sampler=config["training"]["batch_sampler"], drop_last=True)
  perms = [torch.as_tensor(p) for p in draw["official_perms"]]
  lams = [np.array(pair) for pair in draw.get("official_lams", [])]
  centres = _Centres([c for pair in draw.get("official_centres", []) for c in pair])
  with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.object(off.torchutils, "randperm_static",
                                          lambda n, proba_static=0: perms.pop(0)))
    stack.enter_context(mock.patch.object(off.sampler.random, "randint",
                                          lambda a, b: draw["official_batch_seed"]))
    stack.enter_context(mock.patch.object(off.misc, "sample_lams",
                                          lambda beta, n=2, seed=None: lams.pop(0)))
    stack.enter_context(mock.patch.object(off.misc, "get_nprandom", lambda seed=None: centres))
    loader = torch.utils.data.DataLoader(wrapper, batch_sampler=sampler, num_workers=0)
    data = next(iter(loader))
  if perms or lams or centres.values or wrapper.dataset.items:
    raise AssertionError("their code did not consume every shared draw")
  return data


# ------------------------------------------------------------------------------------------------
# (A) Steps.


def _bn_stats(x, channel_axis):
  """Per-channel batch mean and biased variance of a BN input, float64."""
  x = np.asarray(x, np.float64)
  axes = tuple(a for a in range(x.ndim) if a != channel_axis)
  return x.mean(axis=axes), x.var(axis=axes)


def run_official(off, method, draws, state, float32_masks, double=False):
  """Their 3 steps from `state`; per step a dict of NumPy records (their layout, NHWC images).

  `double`: their network in float64 (`network.double()`, the collated pixels cast to float64 by
  a forward pre-hook; their loss and SGD follow the parameters' dtype).
  """
  import torch
  config = official_config(off, method)
  members = METHODS[method]["num_members"]
  device = torch.device("cpu")
  wrapper_class = off.wrapper.MixMoDataset if members > 1 else off.wrapper.MSDADataset
  model = off.model_wrapper.ModelWrapper(config=config["model_wrapper"], config_args=config,
                                         device=device)
  network = model.network
  network.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
  hooks = []
  if double:
    network.double()  # In place: the optimizer keeps the same Parameter objects.
    hooks.append(network.register_forward_pre_hook(
        lambda module, args: (dict(args[0], pixels=args[0]["pixels"].double()),)
        if isinstance(args[0], dict) else (args[0].double(),)))
  learner = object.__new__(off.learner.Learner)  # Only its batch and step methods are used.
  learner.model_wrapper, learner.config_args, learner.device = model, config, device
  wrapper = wrapper_class(dataset=None, num_classes=NUM_CLASSES, num_members=members,
                          dict_config=config["training"]["dataset_wrapper"],
                          properties=CIFAR_PROPERTIES.get)
  seen = {}
  hooks.append(network.layer1.register_forward_pre_hook(
      lambda module, args: seen.__setitem__("mixed", args[0].detach().numpy().copy())))
  for name, module in network.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      hooks.append(module.register_forward_pre_hook(
          lambda module, args, name=name: seen.setdefault("bn", {}).__setitem__(
              name, _bn_stats(args[0].detach().numpy(), 1))))
  hooks.append(network.register_forward_hook(
      lambda module, args, output: seen.__setitem__(
          "logits", np.stack([output[f"logits_{i}"].detach().numpy() for i in range(members)],
                             axis=1))))
  params = dict(network.named_parameters())
  start = {k: v.detach().numpy().copy() for k, v in params.items()}
  records, epoch = [], 1
  wrapper.set_ratio_epoch(epoch / config["training"]["nb_epochs"])
  model.to_train_mode(epoch=epoch)
  for k, draw in enumerate(draws):
    if k // STEPS_PER_EPOCH + 1 != epoch:  # Their epoch end (AbstractLearner.train), next epoch.
      model.scheduler.step()
      epoch += 1
      wrapper.set_ratio_epoch(epoch / config["training"]["nb_epochs"])
      model.to_train_mode(epoch=epoch)
    data = official_batch(off, wrapper, config, draw)
    if float32_masks and members > 1:
      data["metadata"]["mixmo_masks"] = [torch.as_tensor(draw["masks"][:, 0, :, :, 0][:, None])]
    seen.clear()
    record = dict(lr=model.optimizer.param_groups[0]["lr"])
    with torch.no_grad():
      record["l2"] = float(model.loss.l2_reg())
    tensors = learner._prepare_batch_train(data)
    losses = []
    step_loss = model.loss

    class Recorder:  # Their ModelWrapper.step calls self.loss(output, target): keep the value.
      def __getattr__(self, name):
        return getattr(step_loss, name)

      def __call__(self, *args, **kwargs):
        value = step_loss(*args, **kwargs)
        losses.append(float(value.detach()))
        return value

    model.loss = Recorder()
    try:
      learner._train_subloop(tensors)
    finally:
      model.loss = step_loss
    if model.warmup_scheduler is not None:
      model.warmup_scheduler.step()
    pixels = tensors["pixels"].numpy()
    record.update(
        loss=losses[0], mixed=np.transpose(seen["mixed"], (0, 2, 3, 1)), bn=seen["bn"],
        logits=seen["logits"],
        inputs=[np.transpose(pixels[:, 3 * i:3 * i + 3], (0, 2, 3, 1)) for i in range(members)],
        targets=np.stack([tensors["target"][f"target_{i}"].numpy() for i in range(members)], 1),
        grads={k: v.grad.numpy().copy() for k, v in params.items()},
        weights={k: v.detach().numpy().copy() for k, v in params.items()},
        momenta={k: model.optimizer.state[v]["momentum_buffer"].numpy().copy()
                 for k, v in params.items()},
        moving={k: v.numpy().copy() for k, v in network.state_dict().items()
                if k.endswith(("running_mean", "running_var"))})
    record["updates"] = {k: record["weights"][k] - start[k] for k in start}
    if members > 1:
      meta = tensors["metadata"]
      mask = meta["mixmo_masks"][0].to(torch.float32)  # Their M = 2 form: m_1 = 1 - m_0.
      record["masks"] = torch.stack([mask, 1.0 - mask], 1).numpy()[:, :, 0]
      record["kappa"] = np.stack([np.asarray(v, np.float64) for v in meta["mixmo_lams"]], 1)
    records.append(record)
  for hook in hooks:
    hook.remove()
  network.eval()
  with torch.no_grad():
    x = torch.as_tensor(np.transpose(draws[0]["inputs"][0], (0, 3, 1, 2)).copy())
    out = network(x.double() if double else x)
  records[-1]["inference"] = np.stack([out[f"logits_{i}"].numpy() for i in range(members)], 1)
  return records


def _float64_batch_norm(self, inputs, training=None):
  """FusedBatchNorm's equations (those of its `portable_call`) in the inputs' dtype: the one
  substitution of the float64 check, as TensorFlow's fused kernel has no float64."""
  import keras
  ops = keras.ops
  if training:
    mean = ops.mean(inputs, axis=(0, 1, 2))
    variance = ops.mean(ops.square(inputs - mean), axis=(0, 1, 2))
    count = math.prod(inputs.shape[:-1])
    factor = 1.0 - self.momentum
    self.moving_mean.assign((1.0 - factor) * self.moving_mean.value + factor * mean)
    self.moving_variance.assign((1.0 - factor) * self.moving_variance.value
                                + factor * variance * (count / (count - 1)))
  else:
    mean, variance = self.moving_mean.value, self.moving_variance.value
  return (inputs - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma.value + self.beta.value


def run_ours(model, method, draws, state, lr0, mean, std):
  """Our 3 steps from `state` through `training.tf_engine.apply_step` (PyTorchSGD, the warmup /
  milestone schedule); per step a dict of NumPy records in their layout.

  A model built under the float64 policy runs the float64 check: BatchNorm through
  `_float64_batch_norm`, and the loss of docs/method.md §5 in float64 (`_float64_loss`) on the
  heads' output, since the library's loss, and the logits layer, keep float32 on purpose.
  """
  from unittest import mock

  from mixmo_tf.models.layers import FusedBatchNorm
  dtype = model.trainable_variables[0].dtype
  if dtype != "float64":
    return _run_ours(model, method, draws, state, lr0, mean, std, "float32")
  with mock.patch.object(FusedBatchNorm, "call", _float64_batch_norm):
    return _run_ours(model, method, draws, state, lr0, mean, std, "float64")


def _float64_loss(spec, logits, targets, kappa, variables):
  """`core.step.replica_loss` (w_r-weighted soft cross-entropy, batch mean, L2 on every trainable
  variable) written out in float64, for the float64 check."""
  import tensorflow as tf
  kappa = tf.cast(kappa, tf.float64)
  powered = tf.pow(kappa, 1.0 / spec.weight_root)
  weights = spec.num_members * powered / tf.reduce_sum(powered, axis=-1, keepdims=True)
  cross_entropy = -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)
  loss = tf.reduce_sum(weights * cross_entropy) / spec.global_batch_size
  return loss + spec.l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])


def _run_ours(model, method, draws, state, lr0, mean, std, dtype):
  import keras
  import tensorflow as tf

  from mixmo_tf.core import losses, optimizers, schedules
  from mixmo_tf.models.layers import FusedBatchNorm
  from mixmo_tf.training import tf_engine
  load_official(model, state)
  spec = step_spec(method, mean, std)
  layout = official_layout(model)
  bn_layers = [layer for layer in model.layers if isinstance(layer, FusedBatchNorm)]
  bn_names = {}
  for key, layer, weight, _, _ in layout:
    if weight == "gamma":
      bn_names[layer] = key[:-len(".weight")]
  heads = model.get_layer("heads").output  # The logits before the float32 logits layer.
  probe = keras.Model(model.inputs, [model.get_layer("mixing").output]
                      + [layer.input for layer in bn_layers] + [heads])
  schedule = schedules.WarmupPiecewiseSchedule(lr0, STEPS_PER_EPOCH, WARMUP_STEPS, (MILESTONE,),
                                               DECAY)
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  optimizer = optimizers.make_optimizer("pytorch", lambda: schedule(step))
  variables = model.trainable_variables
  optimizer.build(variables)
  paths = [v.path for v in variables]
  start = official_values(model)
  records = []
  for draw in draws:
    inputs = [tf.constant(x.astype(dtype)) for x in draw["inputs"]]
    targets = tf.constant(draw["targets"].astype(dtype))
    masks, kappa = tf.constant(draw["masks"].astype(dtype)), tf.constant(draw["kappa"])
    record = dict(lr=float(schedule(step)), l2=float(losses.l2_penalty(variables)))
    moving = [(w, w.numpy()) for layer in bn_layers
              for w in (layer.moving_mean, layer.moving_variance)]
    outputs = probe(inputs + [masks], training=True)  # Same forward as the step's; BN restored.
    for variable, value in moving:
      variable.assign(value)
    seen = {}

    def grad_fn(inputs, targets, masks, kappa):
      if dtype == "float64":
        with tf.GradientTape() as tape:
          logits = keras.Model(model.inputs, heads)(inputs + [masks], training=True)
          loss = _float64_loss(spec, logits, targets, kappa, variables)
        seen["out"] = (loss, tape.gradient(loss, variables), tf.constant(0.0))
      else:
        seen["out"] = tf_engine.loss_and_gradients(model, optimizer, spec, inputs, targets,
                                                   masks, kappa)
      return seen["out"]

    tf_engine.apply_step(model, optimizer, spec, inputs, targets, masks, kappa, grad_fn=grad_fn)
    step.assign_add(1)
    loss, grads, _ = seen["out"]
    weights = losses.mixmo_weights(kappa, spec.weight_root).numpy()
    record.update(
        loss=float(loss), mixed=outputs[0].numpy(), logits=outputs[-1].numpy(),
        bn={bn_names[layer.name]: _bn_stats(x.numpy(), 3)
            for layer, x in zip(bn_layers, outputs[1:-1])},
        inputs=draw["inputs"], targets=draw["targets"] * weights[:, :, None],
        grads=official_values(model, {p: g.numpy() for p, g in zip(paths, grads)}),
        weights=official_values(model),
        momenta=official_values(model, {p: m.numpy() for p, m in
                                        zip(paths, optimizer.momentums)}),
        masks=draw["masks"][..., 0], kappa=draw["kappa"])
    record["moving"] = {k: v for k, v in record["weights"].items()
                        if k.endswith(("running_mean", "running_var"))}
    record["weights"] = {k: v for k, v in record["weights"].items() if k not in record["moving"]}
    record["updates"] = {k: record["weights"][k] - start[k] for k in record["weights"]}
    records.append(record)
  images = tf.constant(draws[0]["inputs"][0].astype(dtype))
  records[-1]["inference"] = keras.Model(model.inputs, heads)(
      [images] * model.num_members + [None], training=False).numpy()
  return records


def compare_steps(ours, theirs, members, rtol):
  """All rows of one (method, mask mode) run, in pipeline order, step by step."""
  rows = []
  for k, (a, b) in enumerate(zip(ours, theirs), start=1):
    add = lambda quantity, pairs: rows.extend(compare(quantity, pairs, rtol, k))
    add("learning rate", [("lr", a["lr"], b["lr"])])
    add("member inputs", [(f"member {i}", a["inputs"][i], b["inputs"][i])
                          for i in range(members)])
    if members > 1:
      add("masks", [(f"member {i}", a["masks"][:, i], b["masks"][:, i])
                    for i in range(members)])
      add("kappa", [("kappa", a["kappa"], b["kappa"])])
    add("w_r-weighted targets", [("targets", a["targets"], b["targets"])])
    add("mixed features", [("mixing output", a["mixed"], b["mixed"])])
    add("BN batch mean", [(k, a["bn"][k][0], b["bn"][k][0]) for k in b["bn"]])
    add("BN batch variance", [(k, a["bn"][k][1], b["bn"][k][1]) for k in b["bn"]])
    add("member logits", [("logits", a["logits"], b["logits"])])
    add("L2 term (sum of squares)", [("l2", a["l2"], b["l2"])])
    add("loss (w_r CE + L2)", [("loss", a["loss"], b["loss"])])
    add("gradients", [(k, a["grads"][k], b["grads"][k]) for k in b["grads"]])
    add("BN moving statistics", [(k, a["moving"][k], b["moving"][k]) for k in b["moving"]])
    add("momentum buffers", [(k, a["momenta"][k], b["momenta"][k]) for k in b["momenta"]])
    add("weights", [(k, a["weights"][k], b["weights"][k]) for k in b["weights"]])
    add("weight change since start", [(k, a["updates"][k], b["updates"][k])
                                      for k in b["updates"]])
  rows.extend(compare("inference logits after 3 steps",
                      [("logits", ours[-1]["inference"], theirs[-1]["inference"])], rtol, STEPS))
  return rows


def our_config(method):
  """Our Config for the method's paper row, read from its flagfile."""
  from absl import flags

  from mixmo_tf.config import config_from_flags, define_flags
  values = flags.FlagValues()
  define_flags(values)
  path = os.path.join(REPO, "flags", "cifar10", METHODS[method]["flags"])
  values(["official_equivalence", f"--flagfile={path}"])
  return config_from_flags(values)


def run_steps(off, args, mean, std):
  """Section (A): every method and mask mode, both codes in float32 and (unless --skip_float64)
  in float64; returns all rows, method and mode added."""
  import keras
  import torch

  from mixmo_tf.models import build_model
  dtypes = ("float32",) + (() if args.skip_float64 else ("float64",))
  models = {}
  all_rows = []
  for method, settings in METHODS.items():
    members = settings["num_members"]
    draws = shared_draws(method, args.seed, mean, std)
    torch.manual_seed(args.seed)
    config = official_config(off, method)
    network = off.networks.get_network(config["model_wrapper"]["network"], config)
    state = {k: v.numpy().copy() for k, v in network.state_dict().items()}
    lr0 = our_config(method).base_lr
    for dtype in dtypes:
      if (members, dtype) not in models:
        keras.utils.set_random_seed(args.seed)
        keras.mixed_precision.set_dtype_policy(dtype)
        try:
          models[members, dtype] = build_model("wide_resnet", depth=DEPTH, width=WIDTH,
                                               num_members=members, num_classes=NUM_CLASSES)
        finally:
          keras.mixed_precision.set_dtype_policy("float32")
    modes = MASK_MODES if members > 1 else ("no masks",)
    theirs_all = {(mode, dtype): run_official(off, method, draws, state,
                                              float32_masks=mode != MASK_MODES[0],
                                              double=dtype == "float64")
                  for mode in modes for dtype in dtypes}
    ours = {"float32": run_ours(models[members, "float32"], method, draws, state, lr0, mean, std)}
    if "float64" in dtypes:
      # Their kappa is their float32 mask mean and their member 1 mask 1 - m_0, ours our own: equal
      # to ~1e-7 (the "kappa" and "masks" rows), but the gradients of a noise batch amplify that;
      # the float64 check gives ours their values.
      given = [dict(d, kappa=t["kappa"], masks=t["masks"][..., None].astype(np.float64))
               if members > 1 else d for d, t in zip(draws, theirs_all[modes[-1], "float64"])]
      ours["float64"] = run_ours(models[members, "float64"], method, given, state, lr0, mean,
                                 std)
    for mode in modes:
      theirs = {dtype: theirs_all[mode, dtype] for dtype in dtypes}
      pairs = [(ours["float32"], theirs["float32"])]
      if len(dtypes) > 1:
        pairs += [(ours["float32"], ours["float64"]), (theirs["float32"], theirs["float64"]),
                  (ours["float64"], theirs["float64"])]
      compared = [compare_steps(a, b, members, args.rtol) for a, b in pairs]
      rows = combine(compared + [None] * (4 - len(compared)), args.rtol)
      for row in rows:
        row.update(method=method, mode=mode)
      all_rows.extend(rows)
      print_step_table(method, mode, rows, draws)
  return all_rows


def _sci(value):
  return "-" if value is None else f"{value:.1e}"


def print_step_table(method, mode, rows, draws):
  kinds = ", ".join("patch" if d["use_patch"] else ("linear" if "official_lams" in d else "-")
                    for d in draws)
  print(f"\n[{method} | {mode}] batches: {kinds}; role swaps: {[d['swap'] for d in draws]}")
  print(f"  {'quantity':31s} {'tensors':>7s} {'f32 rel':>8s} {'max abs':>8s} {'rnd ours':>8s} "
        f"{'rnd OFF':>8s} {'f64 rel':>8s}  {'worst f32 (step: tensor)':30s} verdict")
  for row in summarise(rows):
    where = f"{row['step']}: {row['name']}"
    print(f"  {row['quantity']:31s} {row['tensors']:7d} {row['rel']:8.1e} {row['max_abs']:8.1e} "
          f"{_sci(row['rounding_ours']):>8s} {_sci(row['rounding_theirs']):>8s} "
          f"{_sci(row['rel64']):>8s}  {where:30.30s} {row['verdict']}")
  for label, first in (("float32 over rtol", first_difference(rows)),
                       ("DIFFERENT (float64 over rtol)", first_difference(rows, "DIFFERENT"))):
    print(f"  first {label}: " + (
        "none" if first is None else
        f"step {first['step']}, {first['quantity']} ({first['name']}): f32 rel {first['rel']:.2e}"
        f" (max abs {first['max_abs']:.2e}), f64 rel {_sci(first['rel64'])}"))


# ------------------------------------------------------------------------------------------------
# (B) Settings.


def official_lr_per_step(off, config, steps_per_epoch, epochs):
  """Their learning rate at every step of a run: their ModelWrapper's schedulers (warmup per
  step, MultiGammaStepLR per epoch) on an SGD over one dummy parameter."""
  import torch
  wrapper_config = copy.deepcopy(config["model_wrapper"])
  optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))],
                              **wrapper_config["optimizer"]["params"])
  holder = types.SimpleNamespace(config=wrapper_config, optimizer=optimizer,
                                 _scheduler_initialized=False)
  off.model_wrapper.ModelWrapper._init_scheduler(holder, 1)
  lrs = np.empty(steps_per_epoch * epochs)
  for epoch in range(epochs):
    for k in range(steps_per_epoch):
      lrs[epoch * steps_per_epoch + k] = optimizer.param_groups[0]["lr"]
      if holder.warmup_scheduler is not None:
        holder.warmup_scheduler.step()
    holder.scheduler.step()
  return lrs


def settings_rows(off):
  """Section (B): deterministic comparisons of settings and schedules."""
  import warnings

  import torch

  from mixmo_tf.core import schedules
  from mixmo_tf.data import datasets
  from mixmo_tf.models.layers import BN_EPSILON, BN_MOMENTUM
  rows = []

  def row(name, ours, theirs, ok=None):
    if ok is None:
      ok = bool(np.allclose(np.asarray(ours, np.float64), np.asarray(theirs, np.float64),
                            rtol=1e-6, atol=0)) if not isinstance(ours, str) else ours == theirs
    rows.append(dict(quantity=name, ours=ours, theirs=theirs, ok=bool(ok)))

  for method in METHODS:
    ours = our_config(method)
    theirs = off.misc.load_config_yaml(
        os.path.join(off.dir, "config", "cifar10", METHODS[method]["official"]))
    training, wrapper = theirs["training"], theirs["model_wrapper"]
    mixmo = training["dataset_wrapper"]["mixmo"]
    row(f"{method}: members", ours.num_members, theirs["num_members"])
    row(f"{method}: batch size / repetitions", [ours.batch_size, ours.batch_repetitions],
        [training["batch_size"], training["batch_sampler"]["batch_repetitions"]])
    row(f"{method}: epochs", ours.epochs, training["nb_epochs"])
    row(f"{method}: lr0", ours.base_lr, wrapper["optimizer"]["params"]["lr"])
    row(f"{method}: momentum / nesterov / wd", [0.9, True, 0.0],
        [wrapper["optimizer"]["params"]["momentum"], wrapper["optimizer"]["params"]["nesterov"],
         wrapper["optimizer"]["params"]["weight_decay"]])
    row(f"{method}: warmup steps",
        schedules.warmup_steps(TRAIN_SIZE, ours.batch_size, ours.batch_repetitions,
                               ours.lr_warmup_epochs), wrapper["warmup_period"])
    gammas = wrapper["lr_schedule"]["params"]["dict_milestone_to_gamma"]
    row(f"{method}: milestones", list(ours.lr_decay_epochs), sorted(gammas))
    row(f"{method}: decay ratio", [ours.lr_decay_ratio] * len(gammas),
        [gammas[m] for m in sorted(gammas)])
    row(f"{method}: L2", ours.l2, float(wrapper["loss"]["l2_reg"]))
    if ours.num_members > 1:
      row(f"{method}: alpha / r", [ours.alpha, ours.weight_root],
          [float(mixmo["alpha"]), float(mixmo["weight_root"])])
      theirs_p = mixmo["mix_method"]["prob"] if mixmo["mix_method"]["method_name"] == "cutmix" \
          else 0.0
      ours_p = ours.patch_probability if ours.mixing == "cutmix" else 0.0
      row(f"{method}: patch probability p0", ours_p, theirs_p)
    # The learning rate of every step of the whole run (their schedulers vs ours).
    steps_per_epoch = TRAIN_SIZE // ours.unique_batch_size
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      theirs_lr = official_lr_per_step(off, theirs, steps_per_epoch, training["nb_epochs"])
    ours_lr = np.asarray(schedules.schedule_from_config(ours, TRAIN_SIZE)(
        np.arange(len(theirs_lr), dtype=np.int64)), np.float64)
    _, rel = relative_error(ours_lr, theirs_lr)
    worst = int(np.argmax(np.abs(ours_lr - theirs_lr)))
    rows.append(dict(quantity=f"{method}: lr at all {len(theirs_lr)} steps",
                     ours=f"max rel {rel:.1e} (step {worst + 1})",
                     theirs=f"{theirs_lr[0]:.3g} .. {theirs_lr[-1]:.3g}", ok=bool(rel < 1e-6)))
  # p(e) at every epoch: their wrapper's probability (captured) vs schedules.patch_probability.
  config = off.misc.load_config_yaml(
      os.path.join(off.dir, "config", "cifar10", METHODS["cut-mixmo"]["official"]))
  wrapper = off.wrapper.MixMoDataset(
      dataset=None, num_classes=NUM_CLASSES, num_members=2,
      dict_config=config["training"]["dataset_wrapper"], properties=CIFAR_PROPERTIES.get)
  probs = []
  from unittest import mock
  with mock.patch.object(off.misc, "random_lower_than",
                         lambda prob, seed=None, r=None: probs.append(prob) or False):
    for epoch in range(1, NUM_EPOCHS + 1):
      wrapper.set_ratio_epoch(epoch / NUM_EPOCHS)
      wrapper.get_mixmo_mix_method_at_ratio_epoch(batch_seed=1)
  ours_p = np.array([float(schedules.patch_probability(e, NUM_EPOCHS, 0.5))
                     for e in range(1, NUM_EPOCHS + 1)])
  diff = float(np.max(np.abs(ours_p - np.array(probs))))
  rows.append(dict(quantity="p(e), epochs 1-300", ours=f"max abs diff {diff:.1e}",
                   theirs=f"{probs[274]:.3f} at 275, {probs[275]:.3f} at 276, "
                   f"{probs[-1]:.3f} at 300", ok=bool(diff < 1e-6)))
  # Normalisation, BN constants.
  mean32, theirs_mean32 = (np.float32(datasets.CIFAR_MEAN),
                           np.float32(off.augmentations.cifar_mean))
  row("CIFAR mean (float32)", [float(v) for v in mean32], [float(v) for v in theirs_mean32],
      ok=bool(np.array_equal(mean32, theirs_mean32)))
  row("CIFAR std (float32)", [float(v) for v in np.float32(datasets.CIFAR_STD)],
      [float(v) for v in np.float32(off.augmentations.cifar_std)],
      ok=bool(np.array_equal(np.float32(datasets.CIFAR_STD),
                             np.float32(off.augmentations.cifar_std))))
  bn = torch.nn.BatchNorm2d(4, momentum=off.networks.wrn.BATCHNORM_MOMENTUM)
  row("BN momentum (Keras form) / epsilon", [BN_MOMENTUM, BN_EPSILON],
      [1.0 - bn.momentum, bn.eps])
  return rows


# ------------------------------------------------------------------------------------------------
# (C) Distributions.


def probe_images(count):
  """Images whose pixel (r, c) holds r + 1 in channel 0 and c + 1 in channel 1: the centre
  pixels of a crop give its offsets and whether it was flipped."""
  rows = np.arange(1, IMAGE_SIZE + 1, dtype=np.uint8)
  image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  image[..., 0], image[..., 1] = rows[:, None], rows[None, :]
  return np.broadcast_to(image, (count,) + image.shape).copy()


def crop_offsets(crops):
  """(row offset, column offset, flipped) in the padded image for crops of `probe_images`
  (uint8 [N, 32, 32, 3]); offsets are 0 .. 2 * PADDING."""
  crops = np.asarray(crops, np.int64)
  centre, right = crops[:, 16, 16], crops[:, 16, 17]
  flipped = right[:, 1] < centre[:, 1]
  dy = centre[:, 0] - 13  # 16 + dy - 4 + 1
  dx = np.where(flipped, centre[:, 1] - 12, centre[:, 1] - 13)
  return dy, dx, flipped.astype(np.int64)


def _distribution_row(rows, quantity, test, ours, theirs, note=""):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  p = ks_pvalue(ours, theirs) if test == "KS" else chi2_pvalue(ours, theirs)
  rows.append(dict(quantity=quantity, test=test, n_ours=int(ours.size), n_theirs=int(theirs.size),
                   mean_ours=float(ours.mean()), mean_theirs=float(theirs.mean()),
                   p_value=p, ok=bool(p >= P_VALUE_LEVEL), note=note))
  r = rows[-1]
  print(f"  {quantity:44.44s} {test:5s} {r['n_ours']:8d} {r['n_theirs']:8d} "
        f"{r['mean_ours']:11.5g} {r['mean_theirs']:11.5g} {p:9.3g} {'yes' if r['ok'] else 'NO'}"
        f"{'  ' + note if note else ''}")


def distribution_rows(off, args, mean, std):
  """Section (C): one two-sample test per quantity; prints each p-value."""
  import keras
  import tensorflow as tf
  import torch
  from PIL import Image

  from mixmo_tf.core import augment, mixing, schedules, seeds
  from mixmo_tf.core import step as step_lib
  from mixmo_tf.models import build_model
  rows = []
  print(f"\n(C) Distributions: two-sample tests, p < {P_VALUE_LEVEL} = a difference")
  print(f"  {'quantity':44s} {'test':5s} {'n ours':>8s} {'n theirs':>8s} {'mean ours':>11s} "
        f"{'mean theirs':>11s} {'p-value':>9s} ok")
  np.random.seed(args.seed)
  random.seed(args.seed)
  torch.manual_seed(args.seed)
  keras.utils.set_random_seed(args.seed)
  root = tf.constant(seeds.step_root(args.seed))
  # Initial weights per layer: R fresh initialisations on each side.
  config = official_config(off, "cut-mixmo")
  theirs = [off.networks.get_network(config["model_wrapper"]["network"], config).state_dict()
            for _ in range(args.init_draws)]
  model = build_model("wide_resnet", depth=DEPTH, width=WIDTH, num_members=2,
                      num_classes=NUM_CLASSES)
  layout = official_layout(model)
  tails = {"ours": [0, 0], "theirs": [0, 0]}
  constants_equal = True
  ours_state = official_values(model)
  for key, layer, weight, kind, member in layout:
    if kind in ("vector", "dense_bias"):
      constants_equal &= all(np.array_equal(ours_state[key], t[key].numpy()) for t in theirs)
      continue
    if kind == "dense_kernel" and member > 0:
      continue  # One test per head layer: members pooled.
    keras_layer = model.get_layer(layer)
    initializer = keras_layer.kernel_initializer
    shape = tuple(_weights_by_name(keras_layer)[weight].shape)
    ours_values = [np.asarray(type(initializer).from_config(
        dict(initializer.get_config(), seed=None))(shape)) for _ in range(args.init_draws)]
    keys = [key] if kind == "conv" else [f"list_fc.{i}.weight" for i in range(2)]
    theirs_values = np.concatenate([t[k].numpy().ravel() for t in theirs for k in keys])
    ours_values = np.concatenate([v.ravel() for v in ours_values])
    fan_in = int(np.prod(shape[:-1])) if kind == "conv" else shape[1]
    sigma = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    for side, values in (("ours", ours_values), ("theirs", theirs_values)):
      tails[side][0] += int(np.sum(np.abs(values) > 2 * sigma * (1 + 1e-6)))
      tails[side][1] += values.size
    name = key if kind == "conv" else "list_fc.*.weight"
    ratio = float(np.var(ours_values) / np.var(theirs_values))
    _distribution_row(rows, f"init {name}", "KS", ours_values / sigma, theirs_values / sigma,
                      note=f"var ratio {ratio:.3f}")
  rows.append(dict(quantity="init: BN / bias constants", test="exact", ok=bool(constants_equal),
                   p_value=None, note="gamma 1, beta 0, moving 0 / 1, head bias 0"))
  rows.append(dict(quantity="init: weights beyond 2 std (truncation)", test="count", ok=True,
                   p_value=None, note=f"ours {tails['ours'][0]} of {tails['ours'][1]}, theirs "
                   f"{tails['theirs'][0]} of {tails['theirs'][1]}"))
  print(f"  init: BN / bias constants equal: {constants_equal}; weights beyond 2 std: ours "
        f"{tails['ours'][0]} / {tails['ours'][1]}, theirs {tails['theirs'][0]} / "
        f"{tails['theirs'][1]}")
  # Crop offsets and flips: their CIFAR train transform vs augment.random_crop_flip.
  count = args.draws
  train_transform = off.augmentations.get_default_composed_augmentations("cifar")[0]
  probe = probe_images(1)[0]
  theirs_crops = np.stack([np.asarray(train_transform(Image.fromarray(probe),
                                                      apply_postprocessing=False)["pixels"])
                           for _ in range(count)])
  ours_crops = np.round(augment.random_crop_flip(
      tf.constant(probe_images(count)), tf.constant([args.seed, 1]), PADDING, True).numpy()
      * 255.0).astype(np.uint8)
  for name, a, b in zip(("crop row offset", "crop column offset", "flip"),
                        crop_offsets(ours_crops), crop_offsets(theirs_crops)):
    _distribution_row(rows, name, "chi2", a, b)
  # Dirichlet draws (member 0's share before any mask).
  ours_lam = mixing.sample_kappa(count, 2, 2.0, tf.constant([args.seed, 2])).numpy()[:, 0]
  theirs_lam = np.array([off.misc.sample_lams(2.0, n=2)[0] for _ in range(count)])
  _distribution_row(rows, "Dirichlet(2, 2) draw", "KS", ours_lam, theirs_lam)
  # Linear-MixMo: member 0's kappa; Cut-MixMo patch batches: realised kappa, box size, position.
  linear_config = off.misc.load_config_yaml(
      os.path.join(off.dir, "config", "cifar10", METHODS["linear-mixmo"]["official"]))
  cut_config = off.misc.load_config_yaml(
      os.path.join(off.dir, "config", "cifar10", METHODS["cut-mixmo"]["official"]))
  make_wrapper = lambda config: off.wrapper.MixMoDataset(
      dataset=None, num_classes=NUM_CLASSES, num_members=2,
      dict_config=config["training"]["dataset_wrapper"], properties=CIFAR_PROPERTIES.get)
  linear_wrapper, cut_wrapper = make_wrapper(linear_config), make_wrapper(cut_config)
  batch_seed = lambda: random.randint(0, off.config.cfg.RANDOM.MAX_RANDOM)
  theirs_linear = [float(linear_wrapper._init_dict_output_mixmo(batch_seed())["metadata"]
                         ["mixmo_lams"][0]) for _ in range(count)]
  # Kappa does not depend on the grid: a 1 x 1 grid keeps the masks small.
  ours_linear = mixing.sample_masks(count, 1, 1, 2, "linear", 2.0, 0.0,
                                    tf.constant([args.seed, 3]))[1].numpy()[:, 0]
  _distribution_row(rows, "Linear-MixMo kappa (member 0)", "KS", ours_linear, theirs_linear)
  always_config = copy.deepcopy(cut_config)  # Their wrapper keeps a reference to its config.
  always_config["training"]["dataset_wrapper"]["mixmo"]["mix_method"]["prob"] = 1.0
  cut_always = make_wrapper(always_config)

  def boxes(masks):
    holders = box_member(masks)
    if (holders < 0).any():
      raise ValueError("a patch batch whose masks are not a box and its complement")
    return [box_of(m[h]) for m, h in zip(masks, holders)]

  theirs_boxes = []
  for _ in range(count):
    meta = cut_always._init_dict_output_mixmo(batch_seed())["metadata"]
    pair = np.stack([m[0].to(torch.float32).numpy() for m in meta["mixmo_masks"]])
    theirs_boxes += boxes(pair[None])
  ours_boxes, chunk = [], 2000
  for first in range(0, count, chunk):
    masks = mixing.sample_masks(min(chunk, count - first), IMAGE_SIZE, IMAGE_SIZE, 2, "cutmix",
                                2.0, 1.0, tf.constant([args.seed, 4 + first]),
                                batch_seed=tf.constant([args.seed, 5]))[0].numpy()[..., 0]
    ours_boxes += boxes(masks)
  ours_boxes, theirs_boxes = np.array(ours_boxes), np.array(theirs_boxes)
  area = lambda b: b[:, 2] * b[:, 3] / IMAGE_SIZE**2
  _distribution_row(rows, "Cut-MixMo realised kappa (box area)", "chi2", area(ours_boxes),
                    area(theirs_boxes))
  for column, name in ((2, "box height"), (3, "box width")):
    _distribution_row(rows, name, "chi2", ours_boxes[:, column], theirs_boxes[:, column])
  ours_full, theirs_full = ours_boxes[ours_boxes[:, 2] > 0], theirs_boxes[theirs_boxes[:, 2] > 0]
  for column, name in ((0, "box top row (non-empty boxes)"), (1, "box left column")):
    _distribution_row(rows, name, "chi2", ours_full[:, column], theirs_full[:, column])
  # Per-batch role swap (patch batches): does member 0 hold the box?
  batches = args.batches
  sample = tf.function(lambda seed, batch_seed, p: mixing.sample_masks(
      8, IMAGE_SIZE, IMAGE_SIZE, 2, "cutmix", 2.0, p, seed, batch_seed=batch_seed))
  step_pairs = [step_lib.step_seeds(root, k, 0) for k in range(batches)]
  ours_swap = []
  for seed, bseed in step_pairs:
    masks = sample(seed, bseed, tf.constant(1.0))[0].numpy()[..., 0]
    holders = box_member(masks)
    ours_swap.append(int(holders[0]))
  theirs_swap = []
  for _ in range(batches):
    seed = batch_seed()
    meta = cut_always._init_dict_output_mixmo(seed)["metadata"]
    masks = np.stack([m[0].to(torch.float32).numpy() for m in meta["mixmo_masks"]])[None]
    theirs_swap.append(int(box_member(masks)[0]))
  _distribution_row(rows, "role swap (box on member 1)", "chi2", ours_swap, theirs_swap)
  # Patch / linear choice per batch at several p(e).
  for epoch in (1, 276, 285, 294, 299, 300):
    p = float(schedules.patch_probability(epoch, NUM_EPOCHS, 0.5))
    ours_patch = []
    for seed, bseed in step_pairs:
      masks = sample(seed, bseed, tf.constant(p, tf.float32))[0].numpy()
      ours_patch.append(int(np.all((masks == 0.0) | (masks == 1.0))))
    cut_wrapper.set_ratio_epoch(epoch / NUM_EPOCHS)
    theirs_patch = [int(cut_wrapper.get_mixmo_mix_method_at_ratio_epoch(batch_seed()) == "cutmix")
                    for _ in range(batches)]
    _distribution_row(rows, f"patch batch at epoch {epoch} (p = {p:.2f})", "chi2", ours_patch,
                      theirs_patch)
  # Self-paired slots per batch (b = 4, B = 64): member 0 and 1 show the same example.
  unique, reps = BATCH_SIZE // 4, 4
  ours_pairs = []
  for seed, _ in step_pairs:
    table = step_lib.member_indices(unique, 2, reps, 0.0, seed).numpy()
    ours_pairs.append(int(np.sum(table[0] == table[1])))
  sampler = off.sampler.BatchRepetitionSampler(
      sampler=range(unique), batch_size=BATCH_SIZE, num_members=2,
      config_batch_sampler={"batch_repetitions": reps, "proba_input_repetition": 0},
      drop_last=True)
  theirs_pairs = []
  for _ in range(batches):
    entries = next(iter(sampler))
    theirs_pairs.append(sum(int(e["index_0"] == e["index_1"]) for e in entries))
  _distribution_row(rows, "self-paired slots per batch (b = 4)", "chi2", ours_pairs, theirs_pairs)
  return rows


# ------------------------------------------------------------------------------------------------


def environment(args, notes):
  import keras
  import tensorflow as tf
  import torch
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
              numpy=np.__version__, tensorflow=tf.__version__, keras=keras.__version__,
              keras_backend=keras.backend.backend(), torch=torch.__version__,
              torch_threads=torch.get_num_threads(), official_dir=args.official_dir,
              official_commit=official_commit(args.official_dir), shims=notes,
              command=" ".join([os.path.basename(sys.executable)] + sys.argv))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description="Step-level and distribution equivalence of mixmo_tf with the official MixMo "
      "PyTorch code (alexrame/mixmo-pytorch). See the module docstring.")
  parser.add_argument("--official_dir", required=True,
                      help="checkout of alexrame/mixmo-pytorch (torch must be installed)")
  parser.add_argument("--json", default="", help="write every row as JSON to this path")
  parser.add_argument("--seed", type=int, default=0, help="seed of every draw on both sides")
  parser.add_argument("--draws", type=int, default=20000,
                      help="per-example draws per distribution test")
  parser.add_argument("--batches", type=int, default=2000,
                      help="batches per per-batch distribution test")
  parser.add_argument("--init_draws", type=int, default=4,
                      help="initialisations pooled per layer for the weight tests")
  parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of (A)")
  parser.add_argument("--skip_steps", action="store_true", help="skip (A)")
  parser.add_argument("--skip_distributions", action="store_true", help="skip (C)")
  parser.add_argument("--skip_float64", action="store_true",
                      help="skip the float64 runs of (A)")
  parser.add_argument("--threads", type=int, default=2, help="torch and TF intra-op threads")
  parser.add_argument("--normalisation", choices=("ours", "official"), default="ours",
                      help="mean / std of our inputs: the library's CIFAR constants (default) or "
                      "the official ones (what remains after aligning them)")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if not os.path.isdir(args.official_dir):
    print(f"--official_dir={args.official_dir!r} is not a directory.", file=sys.stderr)
    return 2
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  import mixmo_tf  # noqa: F401  First: TensorFlow's environment as in training (oneDNN on).
  import keras
  if keras.backend.backend() != "tensorflow":
    print("This comparison runs ours on the TensorFlow backend (KERAS_BACKEND=tensorflow).",
          file=sys.stderr)
    return 2
  import tensorflow as tf
  import torch
  torch.set_num_threads(args.threads)
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  keras.mixed_precision.set_dtype_policy("float32")
  off, notes = import_official(args.official_dir)
  from mixmo_tf.data import datasets
  mean, std = datasets.CIFAR_MEAN, datasets.CIFAR_STD
  if args.normalisation == "official":
    mean, std = tuple(off.augmentations.cifar_mean), tuple(off.augmentations.cifar_std)
  env = environment(args, notes)
  env["normalisation"] = dict(source=args.normalisation, mean=list(mean), std=list(std))
  print("Official MixMo equivalence: mixmo_tf (Keras %s, TensorFlow %s, CPU) vs the "
        "official PyTorch code (torch %s)" % (env["keras"], env["tensorflow"], env["torch"]))
  for key in ("date", "cpu", "cores", "official_dir", "official_commit", "command",
              "normalisation"):
    print(f"  {key}: {env[key]}")
  print(f"  shims / stand-ins: {'; '.join(notes) or 'none'}")
  payload = dict(env=env, steps=[], settings=[], distributions=[])
  print("\n(B) Settings (deterministic)")
  payload["settings"] = settings_rows(off)
  for row in payload["settings"]:
    print(f"  {row['quantity']:44.44s} ours {str(row['ours']):34.34s} theirs "
          f"{str(row['theirs']):34.34s} {'yes' if row['ok'] else 'NO'}")
  if not args.skip_steps:
    print(f"\n(A) Three training steps, same weights and draws (rel = max|ours - theirs| / "
          f"max|theirs| per tensor, worst over tensors and steps; rtol {args.rtol:g}; rnd = a "
          "code's float32 against its own float64)")
    payload["steps"] = run_steps(off, args, mean, std)
  if not args.skip_distributions:
    payload["distributions"] = distribution_rows(off, args, mean, std)
  summary = {}
  for method in METHODS:
    for mode in MASK_MODES + ("no masks",):
      rows = [r for r in payload["steps"] if r["method"] == method and r["mode"] == mode]
      if rows:
        texts = []
        for label, first in (("float32 over rtol", first_difference(rows)),
                             ("DIFFERENT", first_difference(rows, "DIFFERENT"))):
          texts.append(f"first {label}: none" if first is None else
                       f"first {label}: step {first['step']}, {first['quantity']} "
                       f"({first['name']}), rel {first['rel']:.2e}")
        summary[f"{method} | {mode}"] = "; ".join(texts)
  summary["settings differing"] = [r["quantity"] for r in payload["settings"] if not r["ok"]]
  summary["distributions with p < 0.001"] = [r["quantity"] for r in payload["distributions"]
                                             if not r["ok"]]
  payload["summary"] = summary
  print("\nSummary")
  for key, value in summary.items():
    print(f"  {key}: {value}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(payload, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                else str(o))
    print(f"\nJSON: {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

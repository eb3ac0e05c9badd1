"""The torch-free parts of benchmarks/official_equivalence.py (issue 28): weight layouts, the
comparison and test helpers, their box procedure, the shared draws both codes train on, --help.

The comparison itself needs torch and the official code; these check what it relies on.
"""

import importlib.util
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "official_equivalence.py"
from mixmo_tf.data.datasets import CIFAR_MEAN as MEAN, CIFAR_STD as STD  # noqa: E402


@pytest.fixture(scope="module")
def oe():
  spec = importlib.util.spec_from_file_location("official_equivalence", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def wrn(oe):
  """Small WideResNets with the official layout's every kind of layer (shortcuts, heads)."""
  from mixmo_tf.models import build_model
  return {m: build_model("wide_resnet", depth=10, width=1, num_members=m, num_classes=10)
          for m in (1, 2)}


def test_help_runs_without_torch_or_tensorflow():
  out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  assert "--official_dir" in out.stdout and "--json" in out.stdout
  code = (f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import official_equivalence; "
          "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"


def test_layout_names_and_shapes(oe, wrn):
  state = oe.official_values(wrn[2])
  assert state["list_conv1.0.weight"].shape == (16, 3, 3, 3)  # OIHW
  assert state["list_fc.1.weight"].shape == (10, 64) and state["list_fc.1.bias"].shape == (10,)
  assert state["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
  assert "layer1.0.shortcut.0.weight" not in state  # 16 -> 16 at width 1: identity shortcut
  assert {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"} <= set(state)
  trainable = sum(int(np.prod(v.shape)) for v in wrn[2].trainable_variables)
  assert sum(a.size for k, a in state.items() if "running" not in k) == trainable
  vanilla = oe.official_values(wrn[1])
  assert "conv1.weight" in vanilla and "fc.weight" in vanilla and "list_fc.0.weight" not in vanilla


@pytest.mark.parametrize("members", [1, 2])
def test_layout_round_trip_keeps_every_weight_and_the_function(oe, wrn, members):
  model = wrn[members]
  rng = np.random.default_rng(members)
  for variable in model.weights:  # Distinct values everywhere, BN statistics included.
    variable.assign(rng.normal(size=variable.shape).astype(np.float32) * 0.1
                    + (1.0 if "variance" in variable.path else 0.0))
  images = [rng.normal(size=(2, 32, 32, 3)).astype(np.float32) for _ in range(members)]
  before = model(images, training=False).numpy()
  state = oe.official_values(model)
  for variable in model.weights:
    variable.assign(np.zeros(variable.shape, np.float32))
  oe.load_official(model, state)
  after = oe.official_values(model)
  assert sorted(after) == sorted(state)
  for key in state:
    np.testing.assert_array_equal(after[key], state[key], err_msg=key)
  np.testing.assert_array_equal(model(images, training=False).numpy(), before)


def test_layout_conversions_mean_the_same_operation(oe):
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5))  # ours: HWIO
  patch = rng.normal(size=(3, 3, 4))  # one output position's input window, HWC
  theirs = oe.to_official(kernel, "conv")  # OIHW
  ours_out = np.einsum("hwio,hwi->o", kernel, patch)
  theirs_out = np.einsum("oihw,ihw->o", theirs, np.transpose(patch, (2, 0, 1)))
  np.testing.assert_allclose(ours_out, theirs_out, rtol=1e-12)
  np.testing.assert_array_equal(oe.from_official(theirs, "conv"), kernel)
  heads, bias = rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 3))  # [M, D, K], [M, K]
  x = rng.normal(size=(4, 6))
  for member in range(2):
    weight = oe.to_official(heads, "dense_kernel", member)  # torch Linear: [K, D]
    linear = x @ weight.T + oe.to_official(bias, "dense_bias", member)
    np.testing.assert_allclose(linear, x @ heads[member] + bias[member], rtol=1e-12)
    np.testing.assert_array_equal(oe.from_official(weight, "dense_kernel"), heads[member])


def test_relative_error_and_compare(oe):
  assert oe.relative_error([1.0, -2.0], [1.0, -2.0]) == (0.0, 0.0)
  max_abs, rel = oe.relative_error([1.0, -2.0, 0.5], [1.0, -4.0, 0.5])
  assert max_abs == 2.0 and rel == 0.5
  assert oe.relative_error(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
  assert oe.relative_error([1e-9], [0.0])[1] == float("inf")
  with pytest.raises(ValueError, match="shapes differ"):
    oe.relative_error(np.zeros(3), np.zeros(4))
  rows = oe.compare("q", [("a", [1.0, 2.0], [1.0, 2.0]), ("b", [1.0], [1.0 + 1e-3])], 1e-5,
                    step=2)
  assert [r["ok"] for r in rows] == [True, False] and rows[1]["step"] == 2
  assert oe.first_difference(rows)["name"] == "b"


def test_combine_gives_verdicts_and_summaries(oe):
  rtol = 1e-5
  # Float32: q/a equal, q/b over rtol; float64: q/b within rtol (rounding), r/c over (DIFFERENT).
  f32 = oe.compare("q", [("a", [1.0], [1.0]), ("b", [1.0], [1.001])], rtol, 1)
  f32 += oe.compare("r", [("c", [2.0], [2.1])], rtol, 1)
  ours = oe.compare("q", [("a", [1.0], [1.0]), ("b", [1.0], [1.0005])], rtol, 1)
  ours += oe.compare("r", [("c", [2.0], [2.0])], rtol, 1)
  theirs = oe.compare("q", [("a", [1.0], [1.0]), ("b", [1.001], [1.0005])], rtol, 1)
  theirs += oe.compare("r", [("c", [2.1], [2.1])], rtol, 1)
  f64 = oe.compare("q", [("a", [1.0], [1.0]), ("b", [1.0005], [1.0005])], rtol, 1)
  f64 += oe.compare("r", [("c", [2.0], [2.1])], rtol, 1)
  rows = oe.combine([f32, ours, theirs, f64], rtol)
  assert [r["verdict"] for r in rows] == ["equal", "float32 rounding", "DIFFERENT"]
  assert oe.first_difference(rows, "DIFFERENT")["name"] == "c"
  summary = {r["quantity"]: r for r in oe.summarise(rows)}
  assert summary["q"]["tensors"] == 2 and summary["q"]["name"] == "b"
  assert summary["q"]["verdict"] == "float32 rounding" and summary["r"]["verdict"] == "DIFFERENT"
  assert summary["q"]["rounding_ours"] == pytest.approx(0.0005 / 1.0005)
  only32 = oe.combine([oe.compare("q", [("a", [1.0], [1.1])], rtol, 1), None, None, None], rtol)
  assert only32[0]["verdict"] == "over rtol" and only32[0]["rel64"] is None
  with pytest.raises(ValueError, match="rows differ"):
    oe.combine([f32, ours[::-1], theirs, f64], rtol)


def test_two_sample_tests(oe):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=4000), rng.normal(size=4000)
  assert oe.ks_pvalue(a, b) > 1e-3
  assert oe.ks_pvalue(a, b * 1.2) < 1e-3
  x, y = rng.integers(0, 9, 4000), rng.integers(0, 9, 4000)
  assert oe.chi2_pvalue(x, y) > 1e-3
  assert oe.chi2_pvalue(x, np.minimum(y, 7)) < 1e-3  # one value never drawn
  assert oe.chi2_pvalue(np.zeros(50), np.zeros(80)) == 1.0  # one category: identical
  # Rare values are pooled with their neighbours rather than dropped or left with tiny counts.
  rare = np.concatenate([np.zeros(1000), [5.0]])
  assert 0.0 < oe.chi2_pvalue(rare, np.zeros(1000)) <= 1.0


def test_box_helpers_and_their_procedure(oe):
  mask = np.zeros((32, 32))
  mask[3:9, 30:32] = 1
  assert oe.box_of(mask) == (3, 30, 6, 2)
  assert oe.box_of(np.zeros((32, 32))) == (0, 0, 0, 0)
  ring = np.ones((32, 32))
  ring[10:12, 10:12] = 0
  assert oe.box_of(ring) is None
  pair = np.stack([1 - mask, mask])[None]
  assert oe.box_member(pair).tolist() == [1]
  assert oe.box_member(np.stack([np.zeros((32, 32)), np.ones((32, 32))])[None]).tolist() == [0]
  assert oe.box_member(np.stack([np.ones((32, 32)), np.zeros((32, 32))])[None]).tolist() == [1]
  assert oe.box_member(np.stack([ring, 1 - ring])[None]).tolist() == [1]
  # Every box their procedure draws is recovered as draws that give the same mask back.
  for half in (1, 4, 9, 15):
    for u, v in ((0, 31), (half, 16), (20, 3), (31, 31)):
      lam = ((2 * half + 0.5) / 32) ** 2
      box_mask = oe.official_box_mask(lam, u, v)
      found = oe.official_box_draws(oe.box_of(box_mask))
      assert found is not None
      np.testing.assert_array_equal(oe.official_box_mask(*found), box_mask)
  odd = np.zeros((32, 32))
  odd[10:13, 10:12] = 1  # 3 rows away from the border: sides are even unless clipped
  assert oe.official_box_draws(oe.box_of(odd)) is None


def test_official_permutations_reproduce_the_table(oe):
  rng = np.random.default_rng(0)
  unique, reps = 16, 4
  repeated = np.repeat(np.arange(unique), reps)
  table = np.stack([rng.permutation(repeated) for _ in range(3)])
  perms = oe.official_permutations(table, reps)
  assert all(sorted(p.tolist()) == list(range(unique * reps)) for p in perms)
  shuffled = repeated[perms[0]]  # Their BatchRepetitionSampler.output_format.
  np.testing.assert_array_equal(shuffled, table[0])
  for member in (1, 2):
    np.testing.assert_array_equal(shuffled[perms[member]], table[member])


@pytest.mark.parametrize("use_patch,swap", [(True, True), (True, False), (False, True),
                                            (False, False)])
def test_official_batch_seed_gives_their_draws(oe, use_patch, swap):
  seed = oe.official_batch_seed(use_patch, swap, 0.5, coin=True)
  assert (random.Random(seed).uniform(0, 1) < 0.5) == use_patch
  order = [0, 1]
  random.Random(seed + oe.SEED_OFFSET_MIXMO).shuffle(order)
  assert (order == [1, 0]) == swap


def test_shared_draws_cut_mixmo(oe):
  draws = oe.shared_draws("cut-mixmo", 0, MEAN, STD)
  assert [d["use_patch"] for d in draws] == [True, False, True]
  for d in draws:
    members, batch = d["indices"].shape
    assert (members, batch) == (2, oe.BATCH_SIZE)
    unique = len(d["labels"])
    for row in d["indices"]:  # b copies of every unique example per member
      assert np.bincount(row, minlength=unique).tolist() == [4] * unique
    assert d["crops"].dtype == np.uint8 and d["crops"].shape == (2, batch, 32, 32, 3)
    for i in range(2):
      expected = (d["crops"][i] / 255.0 - np.float32(MEAN)) / np.float32(STD)
      np.testing.assert_allclose(d["inputs"][i], expected, atol=1e-5)
      np.testing.assert_array_equal(d["targets"][:, i].argmax(-1), d["labels"][d["indices"][i]])
    np.testing.assert_allclose(d["masks"].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(d["kappa"], d["masks"].mean(axis=(2, 3, 4)), atol=1e-6)
    perms = d["official_perms"]
    shuffled = np.repeat(np.arange(unique), 4)[perms[0]]
    np.testing.assert_array_equal(shuffled[perms[1]], d["indices"][1])
    if d["use_patch"]:  # Their procedure on the recovered draws gives our boxes back.
      holder = 1 if d["swap"] else 0
      for j, ((lam, _), (u, v)) in enumerate(zip(d["official_lams"], d["official_centres"])):
        np.testing.assert_array_equal(oe.official_box_mask(lam, u, v),
                                      d["masks"][j, holder, ..., 0])
    else:
      np.testing.assert_allclose(np.array(d["official_lams"]), d["kappa"], rtol=1e-7)


def test_shared_draws_vanilla_and_linear(oe):
  vanilla = oe.shared_draws("vanilla", 1, MEAN, STD, steps=1)[0]
  assert vanilla["indices"].shape == (1, oe.BATCH_SIZE) and len(vanilla["labels"]) == 64
  assert np.all(vanilla["masks"] == 1.0) and np.all(vanilla["kappa"] == 1.0)
  linear = oe.shared_draws("linear-mixmo", 1, MEAN, STD, steps=1)[0]
  assert not linear["use_patch"] and not linear["swap"]
  assert np.all((linear["kappa"] > 0) & (linear["kappa"] < 1))


def test_crop_offsets_read_back_known_crops(oe):
  image = oe.probe_images(1)[0]
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
  crops, expected = [], []
  for dy, dx, flip in ((0, 0, 0), (8, 8, 1), (3, 5, 1), (7, 2, 0)):
    crop = padded[dy:dy + 32, dx:dx + 32]
    crops.append(crop[:, ::-1] if flip else crop)
    expected.append((dy, dx, flip))
  got = np.stack(oe.crop_offsets(np.stack(crops)), axis=1)
  np.testing.assert_array_equal(got, np.array(expected))

"""Writes one absl flagfile per row of the paper's tables (Table 1, 2, 5) and the CPU protocols.

Run `python flags/generate.py` after changing a recipe; tests/test_flagfiles.py checks that the
committed files equal this script's output, and runs two training steps from each of them.
Settings are the official implementation's released configs (docs/method.md §7.1); names follow its
`<net>-<M>_<method>_<msda>_bar<b>` scheme.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))

CIFAR = dict(model="wide_resnet", depth=28, width=10, batch_size=64, epochs=300,
             base_learning_rate=0.1, lr_warmup_epochs=1, lr_decay_epochs="101,201,226",
             lr_decay_ratio=0.1, l2=3e-4, seed=1234, alpha=2.0, weight_root=3.0,
             msda_alpha=1.0, msda_probability=0.5, input_repetition_probability=0.0,
             ensemble="logits", patch_probability=0.5, optimizer="pytorch", precision="float32")
# Tiny ImageNet: batch 100, lr0 = 0.2 / b (= 0.256 * (100 / b) / 128), milestones 600 / 900 over
# 1200 epochs; PyTorch's coupled weight decay 1e-4 equals an L2 loss term of 0.5e-4 (docs/method.md §5).
TINY = dict(CIFAR, model="preact_resnet18", batch_size=100, epochs=1200, base_learning_rate=0.256,
            lr_decay_epochs="600,900", l2=5e-5, dataset="tiny_imagenet",
            data_dir="/path/to/tiny-imagenet-200")
# CPU protocol "cpu-f10": WRN-28-1, 10 epochs, reference milestones scaled from 300 to 10 epochs.
CPU = dict(CIFAR, width=1, epochs=10, lr_decay_epochs="4,8,9", dataset="folder",
           data_dir="data/cifar10", eval_frequency=1, checkpoint_frequency=1, log_every_steps=100)

# uncertainty-baselines' MIMO recipes (docs/method.md §7.2 checks each value against UB's
# baselines/cifar/mimo.py + utils.py and baselines/imagenet/mimo.py). Batch sizes are global,
# counted with repetitions (UB: per_core_batch_size x num_cores), whatever the device count.
# CIFAR: 8 cores x 64 = 512 (128 unique, b = 4), lr0 = 0.1 x 128 / 128, 250 epochs, decays x0.2
# at UB's (80, 160, 180) x 250 / 200 (0-based) = 1-based 101, 201, 226, warmup 390 steps
# (1 epoch of 50,000 // 128; here w x b x ceil(N / B) = 392 w), Keras' SGD form, L2 3e-4 on all
# parameters, mean of probabilities, seed 42.
UB_CIFAR = dict(model="wide_resnet", depth=28, width=10, num_members=3, mixing="mimo",
                weight_root=1.0, msda="none", batch_repetitions=4, batch_size=512, epochs=250,
                base_learning_rate=0.1, lr_warmup_epochs=390 / 392,
                lr_decay_epochs="101,201,226", lr_decay_ratio=0.2, l2=3e-4, l2_scope="all",
                input_repetition_probability=0.0, optimizer="keras", ensemble="probs",
                precision="float32", seed=42)
# ImageNet ResNet-50: 32 cores x 128 = 4096 (2048 unique, b = 2), lr0 = 0.1 x 2048 / 256 = 0.8
# (= 0.05 x 2048 / 128 here), 150 epochs, x0.1 at (30, 60, 80) x 150 / 90 (0-based) = 1-based 51,
# 101, 134, warmup 5 epochs of 1,281,167 // 2048 = 3125 steps (626 w here), input repetition 0.6,
# L2 1e-4 on kernels and biases only, bfloat16, mean of probabilities, seed 0.
UB_IMAGENET = dict(model="keras_applications:ResNet50", dataset="imagenet2012",
                   data_dir="/path/to/tensorflow_datasets", image_size=224, num_members=2,
                   mixing="mimo", weight_root=1.0, msda="none", batch_repetitions=2,
                   batch_size=4096, epochs=150, base_learning_rate=0.05,
                   lr_warmup_epochs=3125 / 626, lr_decay_epochs="51,101,134",
                   lr_decay_ratio=0.1, l2=1e-4, l2_scope="kernels",
                   input_repetition_probability=0.6, optimizer="keras", ensemble="probs",
                   precision="mixed_bfloat16", seed=0)
VANILLA = dict(num_members=1, batch_repetitions=1, mixing="linear", msda="none")
METHODS = {
    "1net_standard": VANILLA,
    "1net_msdamixup": dict(VANILLA, msda="mixup"),
    "1net_msdacutmix": dict(VANILLA, msda="cutmix"),
    "2_mimo_standard": dict(num_members=2, mixing="mimo", weight_root=1.0, msda="none"),
    "2_linearmixmo_standard": dict(num_members=2, mixing="linear", msda="none"),
    "2_linearmixmo_msdacutmix": dict(num_members=2, mixing="linear", msda="cutmix"),
    "2_cutmixmo-p5_standard": dict(num_members=2, mixing="cutmix", msda="none"),
    "2_cutmixmo-p5_msdacutmix": dict(num_members=2, mixing="cutmix", msda="cutmix"),
}
TABLE2_SHAPES = ("hconcat", "vconcat", "patchup", "fmix", "cowmask")


def rows():
  """(relative path, settings) for every flagfile."""
  for dataset in ("cifar10", "cifar100"):
    for method, settings in METHODS.items():
      for b in ((1,) if method.startswith("1net") else (2, 4)):
        name = f"wrn2810{'_' if b == 1 else '-'}{method}_bar{b}"
        yield f"{dataset}/{name}.flags", dict(CIFAR, dataset=dataset, batch_repetitions=b,
                                              **{k: v for k, v in settings.items()
                                                 if k != "batch_repetitions"})
    if dataset == "cifar100":
      for shape in TABLE2_SHAPES:
        yield (f"cifar100/table2/wrn2810-2_{shape}mixmo-p5_standard_bar2.flags",
               dict(CIFAR, dataset=dataset, num_members=2, mixing=shape, msda="none",
                    batch_repetitions=2))
  # Table 4: CIFAR-100-c, WRN-28-10, b = 4 (vanilla b = 1; DE = 2 vanilla runs through
  # baselines/ensemble.py), with and without AugMix; CIFAR-100-C evaluated at the end. The CutMix
  # row (one network + CutMix) has no AugMix run in the paper.
  for method in ("1net_standard", "1net_msdacutmix", "2_mimo_standard", "2_linearmixmo_standard",
                 "2_cutmixmo-p5_standard"):
    b = 1 if method.startswith("1net") else 4
    for augmix in ((False,) if method == "1net_msdacutmix" else (False, True)):
      name = f"wrn2810{'_' if b == 1 else '-'}{method}{'_augmix' if augmix else ''}_bar{b}"
      settings = {k: v for k, v in METHODS[method].items() if k != "batch_repetitions"}
      yield f"cifar100/table4/{name}.flags", dict(
          CIFAR, dataset="cifar100", batch_repetitions=b, augmix=str(augmix).lower(),
          corruptions="cifar100_c", corruptions_dir="/path/to/CIFAR-100-C", **settings)
  for width in (1, 2, 3):
    net = "res18" if width == 1 else f"res18{width}"
    for method in ("1net_standard", "1net_msdamixup", "1net_msdacutmix",
                   "2_linearmixmo_standard", "2_cutmixmo-p5_standard"):
      for b in ((1,) if method.startswith("1net") else (2, 4)):
        name = f"{net}{'_' if b == 1 else '-'}{method}_bar{b}"
        settings = {k: v for k, v in METHODS[method].items() if k != "batch_repetitions"}
        yield f"tinyimagenet/{name}.flags", dict(TINY, width=width, batch_repetitions=b, **settings)
  for name, method, b in (("vanilla", "1net_standard", 1), ("cutmixmo", "2_cutmixmo-p5_standard", 2),
                          ("linearmixmo", "2_linearmixmo_standard", 2),
                          ("mimo", "2_mimo_standard", 2)):
    settings = {k: v for k, v in METHODS[method].items() if k != "batch_repetitions"}
    yield f"cpu/f10_wrn281_{name}_bar{b}.flags", dict(CPU, batch_repetitions=b, **settings)
  for dataset in ("cifar10", "cifar100"):
    yield f"ub/{dataset}_wrn2810-3_mimo_bar4.flags", dict(UB_CIFAR, dataset=dataset)
  yield "ub/imagenet_resnet50-2_mimo_bar2.flags", UB_IMAGENET
  # The same recipe with MixMo's mixing block (alpha 2, r 3; Cut-MixMo with p = 0.5).
  yield "ub/imagenet_resnet50-2_linearmixmo_bar2.flags", dict(
      UB_IMAGENET, mixing="linear", alpha=2.0, weight_root=3.0)
  yield "ub/imagenet_resnet50-2_cutmixmo-p5_bar2.flags", dict(
      UB_IMAGENET, mixing="cutmix", alpha=2.0, weight_root=3.0, patch_probability=0.5)


def render(path, settings):
  run = os.path.splitext(path)[0].replace("/", "_")
  source = "§7.2, uncertainty-baselines'" if path.startswith("ub/") else "§7.1"
  lines = [f"# {path}: generated by flags/generate.py (docs/method.md {source} settings).",
           f"--output_dir=runs/{run}"]
  lines += [f"--{key}={value}" for key, value in sorted(settings.items())]
  return "\n".join(lines) + "\n"


def main():
  for path, settings in rows():
    full = os.path.join(HERE, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
      f.write(render(path, settings))


if __name__ == "__main__":
  main()

"""One replica's MixMo train step as plain functions: what each member sees, the loss, the update.

`member_batch` turns B/b unique raw examples into the M members' inputs and targets: batch
repetition and pairing (docs/method.md §6), per-copy crop/flip then optional AugMix (§9), optional
pixel MSDA (§8) and the feature masks (§3). `replica_loss` is the w_r-weighted loss plus L2 (§5).
Nothing here holds state or reads flags; both engines call these: the tf.distribute engine inside
`strategy.run` (`training.tf_engine`), the Keras engine inside `MixMoTrainer`'s train step
(`training.trainer`). All `keras.ops` (any backend), AugMix excepted (TensorFlow only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple, Tuple

import keras
from keras import ops

from mixmo_tf.core import augment, losses, msda, rng
from mixmo_tf.core.mixing import sample_masks

# Folded into a replica's step seed to key AugMix; a fold-in leaves the other streams' split of
# that seed, hence every draw of a run without AugMix, unchanged (docs/method.md §9).
_AUGMIX_STREAM = 0xA065


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything one replica step needs, taken from the run's Config and DataInfo."""
  num_members: int
  batch_repetitions: int
  input_repetition_probability: float
  mixing: str
  alpha: float
  weight_root: float
  msda: str
  msda_alpha: float
  msda_probability: float
  global_batch_size: int  # Counted with repetitions, over all replicas.
  l2: float
  num_replicas: int
  num_classes: int
  crop_padding: int
  flip: bool
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  mask_shape: Tuple[int, int]  # The stems' output grid (h, w), where masks live (§12.1).
  augmix: Tuple[int, ...] = ()  # () off, or (width, max depth, severity) (§9).
  l2_scope: str = "all"  # "kernels": kernels and biases only (UB's ImageNet recipe, §5).

  @classmethod
  def create(cls, config, info, mask_shape, num_replicas: int = 1) -> "StepSpec":
    return cls(num_members=config.num_members, batch_repetitions=config.batch_repetitions,
               input_repetition_probability=config.input_repetition_probability,
               mixing=config.mixing, alpha=config.alpha, weight_root=config.weight_root,
               msda=config.msda, msda_alpha=config.msda_alpha,
               msda_probability=config.msda_probability, global_batch_size=config.batch_size,
               l2=config.l2, num_replicas=num_replicas, num_classes=info.num_classes,
               crop_padding=info.crop_padding, flip=info.flip, mean=tuple(info.mean),
               std=tuple(info.std), mask_shape=tuple(mask_shape),
               augmix=((config.augmix_width, config.augmix_depth, config.augmix_severity)
                       if config.augmix else ()), l2_scope=config.l2_scope)


class MemberBatch(NamedTuple):
  """What the M members see in one step (B = b x unique examples on this replica)."""
  inputs: List[Any]  # M normalised images [B, H, W, 3]; member i's own stem input.
  targets: Any  # [B, M, K] (soft with MSDA), member i's target in [:, i].
  masks: Any  # [B, M, h, w, 1], member i's feature mask in [:, i].
  kappa: Any  # [B, M] realised ratios (the masks' means).
  indices: Any  # [M, B] positions in the unique batch: member i's slot j shows indices[i, j].


def member_indices(num_unique, num_members: int, batch_repetitions: int,
                   input_repetition_probability: float, seed):
  """Batch repetition and member pairing (docs/method.md §6): [M, B] indices into the unique batch.

  Each unique index is repeated b times (B = b * num_unique entries); every member gets its own
  random permutation of that list, so each example appears exactly b times per member, each time
  beside independently drawn partners. The first floor(B * rho_ir) slots feed member 0's entry to
  every member (MIMO input repetition, §6.5).
  """
  size = num_unique * batch_repetitions
  repeated = ops.repeat(ops.arange(num_unique, dtype="int32"), batch_repetitions)
  keys = rng.uniform([num_members, size], seed)  # One independent permutation per member row.
  indices = ops.take(repeated, ops.argsort(keys, axis=-1))  # [M, B]
  if input_repetition_probability > 0 and num_members > 1:
    num_shared = ops.cast(ops.floor(ops.cast(size, "float32") * input_repetition_probability),
                          "int32")
    same = ops.arange(size, dtype="int32") < num_shared
    indices = ops.where(same[None, :], indices[:1], indices)
  return indices


def step_seeds(root_seed, step, replica):
  """(replica seed, batch seed) of a step: fold_in(root, step), then fold_in(., replica). The
  per-example draws differ per replica; the per-batch draws (cut-vs-linear, role shuffle) come
  from the batch seed, shared by all replicas (docs/method.md §3.2 step 7)."""
  batch_seed = rng.fold_in(root_seed, step)
  return rng.fold_in(batch_seed, replica), batch_seed


def _augmix_each(spec: StepSpec, x, base, slot, keys):
  """AugMix of every x[j] (float [B, H, W, 3]) with seed fold_in(fold_in(base, slot), keys[j]).

  TensorFlow only: AugMix (Table 4 rows, docs/method.md §9) is built on tf.image.
  """
  import tensorflow as tf

  from mixmo_tf.core import tf_augmix as augmix_lib
  slot_seed = rng.fold_in(base, slot)
  one = lambda pair: augmix_lib.augmix(pair[0], rng.fold_in(slot_seed, pair[1]), *spec.augmix)
  return tf.map_fn(one, (x, keys), fn_output_signature=tf.float32)


def member_batch(spec: StepSpec, images, labels, partners, seed, batch_seed,
                 patch_probability) -> MemberBatch:
  """Repetition, per-copy augmentation, optional MSDA and feature masks for one replica.

  With `spec.augmix` (TensorFlow backend only), each copy is AugMix-ed after its crop/flip and
  before MSDA, keyed by (step, member slot, unique example) as in OFF: the copies of an example in
  one member slot share the op draws but keep their own crops; other slots draw anew
  (docs/method.md §9).

  Args:
    images: [U, H, W, 3] unique raw examples (uint8, or float in [0, 1]); labels [U].
    partners: () or (images [M * B, ...], labels [M * B]) MSDA partners; member i takes the
      i-th block of B.
    seed: [2] stateless seed of this replica's step; batch_seed: the step's shared seed.
    patch_probability: p(e) of the current epoch (§4).
  """
  if spec.augmix and keras.backend.backend() != "tensorflow":
    raise ValueError(f"AugMix (--augmix) runs on the TensorFlow backend only (it is built on "
                     f"tf.image), not on Keras backend {keras.backend.backend()!r}.")
  seed_rep, seed_aug, seed_msda, seed_mask = rng.split_list(seed, 4)
  indices = member_indices(ops.shape(images)[0], spec.num_members, spec.batch_repetitions,
                           spec.input_repetition_probability, seed_rep)  # [M, B]
  batch = ops.shape(indices)[1]
  masks, kappa = sample_masks(batch, spec.mask_shape[0], spec.mask_shape[1], spec.num_members,
                              spec.mixing, spec.alpha, patch_probability, seed_mask,
                              batch_seed=batch_seed)
  member_inputs, member_targets = [], []
  aug_seeds = rng.split(seed_aug, 2 * spec.num_members)
  msda_seeds = rng.split(seed_msda, spec.num_members)
  if spec.augmix:  # A fold-in, not a 5th split: the 4 streams above stay as without AugMix.
    seed_own, seed_partner = rng.split_list(rng.fold_in(seed, _AUGMIX_STREAM), 2)
  for i in range(spec.num_members):
    x = augment.random_crop_flip(ops.take(images, indices[i], axis=0), aug_seeds[i],
                                 spec.crop_padding, spec.flip)
    if spec.augmix:  # Keyed by the unique example: member i's copies of it share the draws.
      x = _augmix_each(spec, x, seed_own, i, indices[i])
    y = ops.one_hot(ops.take(labels, indices[i], axis=0), spec.num_classes)
    if spec.msda != "none":
      block = slice(i * batch, (i + 1) * batch)
      partner_x = augment.random_crop_flip(partners[0][block], aug_seeds[spec.num_members + i],
                                           spec.crop_padding, spec.flip)
      if spec.augmix:  # Partners are independent examples: keyed by their position.
        partner_x = _augmix_each(spec, partner_x, seed_partner, i,
                                 ops.arange(batch, dtype="int32"))
      x, y = msda.apply_msda(x, y, partner_x, ops.one_hot(partners[1][block], spec.num_classes),
                             msda_seeds[i], spec.msda, spec.msda_alpha, spec.msda_probability,
                             feature_mask=masks[:, i] if spec.num_members > 1 else None)
    member_inputs.append(augment.normalize(x, spec.mean, spec.std))
    member_targets.append(y)
  return MemberBatch(member_inputs, ops.stack(member_targets, axis=1), masks, kappa, indices)


def replica_loss(spec: StepSpec, logits, targets, kappa, variables, global_batch_size=None):
  """The one training loss of a replica's batch (docs/method.md §5), for both engines.

  sum over the replica's examples of sum_i w_r(kappa)_i CE(t_i, z_i) (Eq. 3), divided by the
  global batch size, plus l2 * sum(theta^2) / R: gradients are summed over the R replicas, so the
  replicas' losses add up to the batch mean plus one L2 term. With one replica (the Keras engine,
  which sees the global batch) it is the batch mean plus l2 * sum(theta^2). `global_batch_size`
  overrides `spec.global_batch_size` (the Keras engine passes its batch's own size).
  """
  per_example = losses.mixmo_loss(targets, logits, kappa, spec.weight_root)
  loss = ops.sum(per_example) / (spec.global_batch_size if global_batch_size is None
                                 else global_batch_size)
  if spec.l2:
    if spec.l2_scope == "kernels":  # Convolution / dense kernels and biases, not BN's scales.
      variables = [v for v in variables if v.name.endswith(("kernel", "bias"))]
    loss = loss + spec.l2 * losses.l2_penalty(variables) / spec.num_replicas
  return loss


def correct_members(logits, targets):
  """How many member predictions [B, M] equal their (argmax) target, as float32 [B]: / M gives
  each example's share of right members."""
  correct = ops.equal(ops.argmax(logits, axis=-1), ops.argmax(targets, axis=-1))
  return ops.sum(ops.cast(correct, "float32"), axis=-1)

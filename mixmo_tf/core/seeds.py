"""The one seed tree of a run: every random stream derives from `Config.seed` (docs/method.md §12.12).

    seed s (an int in [0, 2**31 - 1], checked by `check_seed` when the Config is validated)
    |- initial weights and Keras' own generators: keras.utils.set_random_seed(s)
    |- step root [s, 0x5EED] (int32 [2]), folded with the global step t (the batch seed, shared by
    |  all replicas) then with the replica id (docs/method.md §3.2 step 7): split in four streams,
    |  repetition, crop/flip, MSDA and masks (`core.step.member_batch`); AugMix folds in 0xA065
    |- data order of epoch e: a NumPy permutation keyed by [s, e, 0]   (`epoch_order`)
    |- MSDA partners of epoch e: NumPy permutations keyed by [s, e, 1] (`partner_order`)
    |- ImageNet folders' random resized crop of example i in epoch e: [s, e, i, 0xC0]
    |  (`crop_generator`, `data.image_files`)
    `- TFDS imagenet2012, read as a stream: file and buffer shuffles of epoch e from [s, e, 7]
       (`stream_shuffle_seed`), the crop at position j from fold_in([s, e], j) (`data.tfds`)

Fixed on purpose, the same in every run whatever its seed: the training subset (`data.images
.subset_indices`, seed 0), the digits train/test split (seed 0) and the test-set halves of the
calibrated NLL (`evaluation.metrics.calibration_split`, seed 31). Deep ensembles train member i
with seed s + i (`baselines.ensemble`). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

ROOT_SEED_TAG = 0x5EED  # The second word of every step's root seed.
MAX_SEED = 2**31 - 1  # The root seed's first word is an int32 on every backend.


def check_seed(seed, name: str = "--seed") -> int:
  """`seed` as an int; ValueError naming `name` unless it is an integer in [0, 2**31 - 1]."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
    raise ValueError(f"{name}={seed!r} is not valid; expected an integer in [0, {MAX_SEED}].")
  return int(seed)


def initialise(seed: int) -> None:
  """Seeds Keras' global generators (and Python's, NumPy's and the backend's) from the run seed:
  the initial weights of every network built afterwards."""
  import keras
  keras.utils.set_random_seed(check_seed(seed))


def step_root(seed: int) -> np.ndarray:
  """The [2] int32 root of the per-step streams: [seed, 0x5EED] (`core.step.step_seeds`)."""
  return np.array([check_seed(seed), ROOT_SEED_TAG], np.int32)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The data order of the 0-based `epoch`: a permutation of range(num_examples) keyed by
  (seed, epoch), the same on every engine and backend and for in-memory or streamed data."""
  return np.random.default_rng([seed, epoch, 0]).permutation(num_examples)


def partner_order(seed: int, epoch: int, num_examples: int, length: int) -> np.ndarray:
  """`length` MSDA partner positions for the 0-based `epoch` (docs/method.md §8): consecutive
  independent permutations keyed by (seed, epoch, 1), concatenated."""
  generator = np.random.default_rng([seed, epoch, 1])
  count = max(1, -(-length // num_examples))
  return np.concatenate([generator.permutation(num_examples) for _ in range(count)])


def crop_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of example `index`'s random resized crop in the 0-based `epoch` (ImageNet
  folders, docs/method.md §9.1): a resumed run redraws the same boxes."""
  return np.random.default_rng([seed, epoch, index, 0xC0])


def stream_shuffle_seed(seed: int, epoch: int) -> int:
  """A non-negative int64 seed of the 0-based `epoch`'s shuffles of a streamed TFDS set."""
  return int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0] >> 1)

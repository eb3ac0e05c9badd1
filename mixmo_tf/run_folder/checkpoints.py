"""Verified checkpoints of both engines behind one interface (`CheckpointStore`).

Two formats share `checkpoints/`, one per run: `ckpt-N.weights.npz` (the Keras engine, any
backend; `array_checkpoints`) and tf.train's `ckpt-N.index` + `.data-*` (the tf.distribute
engine; `tf_checkpoints`, its reads in `tf_format`). Every checkpoint gets a `ckpt-N.sha256`
sidecar right after it is written; a restore first verifies the newest one (sidecar hashes, or
every array read when a kill left no sidecar) and moves damaged ones to `checkpoints/damaged/`
(never deleted), then restores the newest intact one. A folder of the other format is refused with a line naming the engine to use.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging

from mixmo_tf.run_folder import array_checkpoints
from mixmo_tf.run_folder.atomic import write_json_atomic
from mixmo_tf.run_folder.lock import RunFolderError

DAMAGED_DIR = "damaged"
ARRAYS, TF = "arrays", "tf"  # The two formats.
_ENGINE_OF = {ARRAYS: "--engine=keras (the Keras engine, *.weights.npz files)",
              TF: "--engine=custom on KERAS_BACKEND=tensorflow (tf.train files)"}


def step_of(prefix: str) -> int:
  return array_checkpoints.step_of(prefix)


def checkpoint_format(directory: str) -> Optional[str]:
  """ARRAYS or TF for the checkpoints in `directory`, None when it holds none."""
  if array_checkpoints.prefixes(directory):
    return ARRAYS
  if glob.glob(os.path.join(directory, "*.index")) or os.path.exists(
      os.path.join(directory, "checkpoint")):
    return TF
  return None


def checkpoint_files(prefix: str) -> List[str]:
  """The files of one checkpoint: one `.weights.npz`, or tf.train's data and index files."""
  if os.path.exists(prefix + array_checkpoints.SUFFIX):
    return [prefix + array_checkpoints.SUFFIX]
  return sorted(glob.glob(prefix + ".data-*")) + [prefix + ".index"]


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_checksums(prefix: str) -> None:
  """`<prefix>.sha256`: the SHA-256 of every file of the checkpoint, checked before restoring."""
  write_json_atomic(prefix + ".sha256",
                    {os.path.basename(f): _sha256(f) for f in checkpoint_files(prefix)})


def checkpoint_problem(prefix: str) -> Optional[str]:
  """What is wrong with a checkpoint (a missing file, a checksum mismatch, a read error), or None.

  With a `.sha256` sidecar every file is hashed; without one (a kill between the checkpoint and
  its sidecar, or an older version) every array is read, checking its CRC.
  """
  sidecar = prefix + ".sha256"
  if os.path.exists(sidecar):
    try:
      with open(sidecar) as f:
        expected = json.load(f)
    except (OSError, ValueError) as e:
      return f"{sidecar} is unreadable ({e})"
    for name, digest in sorted(expected.items()):
      path = os.path.join(os.path.dirname(prefix), name)
      if not os.path.exists(path):
        return f"{path} is missing"
      if _sha256(path) != digest:
        return f"{path} does not match its SHA-256 in {os.path.basename(sidecar)}"
    return None
  if os.path.exists(prefix + array_checkpoints.SUFFIX):
    return array_checkpoints.problem(prefix + array_checkpoints.SUFFIX)
  if not os.path.exists(prefix + ".index"):
    return f"{prefix}.index is missing"
  from mixmo_tf.run_folder import tf_format
  return tf_format.read_problem(prefix)


def listed_checkpoints(directory: str) -> List[str]:
  """Checkpoint prefixes, oldest first."""
  if checkpoint_format(directory) == TF:
    from mixmo_tf.run_folder import tf_format
    return tf_format.listed(directory)
  return array_checkpoints.prefixes(directory)


def newest_intact_checkpoint(directory: str) -> Optional[str]:
  """The newest checkpoint that passes `checkpoint_problem`; damaged newer ones are moved to
  `directory/damaged/` with a warning naming them. Raises RunFolderError naming every damaged
  file when checkpoints exist but none is intact."""
  candidates = listed_checkpoints(directory)
  damaged = []
  while candidates:
    prefix = candidates.pop()
    problem = checkpoint_problem(prefix)
    if problem is None:
      if damaged and checkpoint_format(directory) == TF:
        from mixmo_tf.run_folder import tf_format
        tf_format.point_state_at(directory, prefix, candidates + [prefix])
      return prefix
    aside = os.path.join(directory, DAMAGED_DIR)
    os.makedirs(aside, exist_ok=True)
    for path in checkpoint_files(prefix) + [prefix + ".sha256"]:
      if os.path.exists(path):
        os.replace(path, os.path.join(aside, os.path.basename(path)))
    logging.warning("Checkpoint %s is damaged: %s. Moved it to %s; trying the previous one.",
                    prefix, problem, aside)
    damaged.append(f"{prefix}: {problem}")
  if damaged:
    raise RunFolderError(
        f"No intact checkpoint in {directory}: " + "; ".join(damaged) + f". The damaged files "
        f"are kept in {os.path.join(directory, DAMAGED_DIR)}. Start over with --overwrite "
        "(deletes this run) or use another --output_dir.")
  return None


def latest_checkpoint(directory: str) -> Optional[str]:
  """The newest checkpoint prefix of either format (not verified), or None."""
  found = listed_checkpoints(directory) if os.path.isdir(directory) else []
  return found[-1] if found else None


def check_format(directory: str, expected: str) -> None:
  """RunFolderError when `directory` holds checkpoints of the other format."""
  found = checkpoint_format(directory) if os.path.isdir(directory) else None
  if found is not None and found != expected:
    raise RunFolderError(
        f"{directory} holds checkpoints written with {_ENGINE_OF[found]}; this run uses "
        f"{_ENGINE_OF[expected]}. Resume it with the engine that wrote it, or start over with "
        f"--overwrite.")


def remove_beyond(directory: str, keep: int) -> None:
  """Deletes the oldest checkpoints beyond `keep` and sidecars left without a checkpoint."""
  for old in listed_checkpoints(directory)[:-keep] if keep else []:
    for path in checkpoint_files(old) + [old + ".sha256"]:
      if os.path.exists(path):
        os.remove(path)
  for sidecar in glob.glob(os.path.join(directory, "*.sha256")):
    prefix = sidecar[:-len(".sha256")]
    if not any(os.path.exists(p) for p in (prefix + ".index",
                                           prefix + array_checkpoints.SUFFIX)):
      os.remove(sidecar)


class CheckpointStore:
  """The run's checkpoints in one format: save(step), restore() the newest intact, latest().

  `guard(name, write)` runs a write and turns a failure into one RunFolderError
  (`RunFolder.guarded`).
  """
  format: str = ""

  def __init__(self, directory: str, keep: int, guard: Callable):
    self.directory, self.keep, self.guard = directory, int(keep), guard

  def latest(self) -> Optional[str]:
    return latest_checkpoint(self.directory)

  def save(self, step: int) -> str:
    raise NotImplementedError

  def restore(self) -> Optional[str]:
    raise NotImplementedError


class ArrayCheckpointStore(CheckpointStore):
  """`ckpt-N.weights.npz` checkpoints of variable groups ({name: [keras.Variable]}, any backend)."""
  format = ARRAYS

  def __init__(self, directory: str, groups: Callable[[], Dict[str, Sequence]], keep: int,
               guard: Callable):
    super().__init__(directory, keep, guard)
    self.groups = groups

  def save(self, step: int) -> str:
    prefix = os.path.join(self.directory, f"ckpt-{step}")

    def write():
      os.makedirs(self.directory, exist_ok=True)
      array_checkpoints.save(prefix + array_checkpoints.SUFFIX, self.groups())
      write_checksums(prefix)
      remove_beyond(self.directory, self.keep)
      return prefix
    return self.guard(f"checkpoints/ckpt-{step}{array_checkpoints.SUFFIX}", write)

  def restore(self) -> Optional[str]:
    if not os.path.isdir(self.directory):
      return None
    check_format(self.directory, ARRAYS)
    prefix = newest_intact_checkpoint(self.directory)
    if prefix:
      array_checkpoints.load(prefix + array_checkpoints.SUFFIX, self.groups())
    return prefix


def load_network_weights(network, directory: str, prefix: Optional[str] = None) -> str:
  """Loads the weights (and BN statistics) of checkpoint `prefix` (default: the newest) of either
  format into `network`; returns the prefix. ValueError when the folder has none."""
  prefix = prefix or latest_checkpoint(directory)
  if not prefix:
    raise ValueError(f"{directory} holds no checkpoint.")
  if os.path.exists(prefix + array_checkpoints.SUFFIX):
    array_checkpoints.load(prefix + array_checkpoints.SUFFIX, {"network": network.variables},
                           partial=True)
  else:
    from mixmo_tf.run_folder import tf_format
    tf_format.load_network(network, prefix)
  return prefix

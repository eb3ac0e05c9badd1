"""The run folder: lock, preparation, verified checkpoints, history, results, exported models.

A run's output_dir holds `flags.txt` (rerunnable with --flagfile), `config.json`,
`data_info.json`, `checkpoints/` (tf.train checkpoints of the TensorFlow loop, or
`ckpt-N.weights.npz` files of the Keras-native loop, each with a `.sha256` sidecar),
`tensorboard/`, `history.json` (one entry per epoch), the final models (`model.keras`,
`model_folded.keras`, and `saved_model/` on TensorFlow) and, written last, `results.json`.
TensorFlow is imported only by what needs it (tf.train checkpoints, summaries, the SavedModel). Rerunning the same command resumes from the
newest intact checkpoint; other flags that change the network, the data or the step -> epoch
mapping are refused (nothing is touched); --overwrite starts over.

Faults lose nothing already written: one training run at a time holds `.lock` (an OS lock, gone
with its process); a damaged newest checkpoint is moved to `checkpoints/damaged/` and the previous
one restored; a failed write (full disk, lost permission) stops the run with one line and leaves
the last good checkpoint as the latest; every file is replaced atomically.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from typing import Callable, Dict, List, Optional

from absl import logging

from mixmo_tf import array_checkpoint
from mixmo_tf.array_checkpoint import prefixes as array_checkpoints
from mixmo_tf.array_checkpoint import step_of as _step_of
from mixmo_tf.config import RESUME_KEYS
from mixmo_tf.run_lock import LOCK_FILE, RunFolderError, RunLock


TMP_SUFFIX = ".tmp"
DAMAGED_DIR = "damaged"


def write_json_atomic(path: str, payload) -> None:
  """Writes JSON to a temporary file renamed over `path`: readers see the old or the new file."""
  tmp = path + TMP_SUFFIX
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


# -- Verified checkpoints ------------------------------------------------------------------------


def checkpoint_files(prefix: str) -> List[str]:
  """The files of one checkpoint: one `.weights.npz` (Keras-native loop) or tf.train's."""
  if os.path.exists(prefix + array_checkpoint.SUFFIX):
    return [prefix + array_checkpoint.SUFFIX]
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

  With a `.sha256` sidecar every file is hashed; without one (a checkpoint written before its
  sidecar, or by an older version) every array is read, checking its CRC (TensorFlow's reader
  for tf.train checkpoints).
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
  if os.path.exists(prefix + array_checkpoint.SUFFIX):
    return array_checkpoint.problem(prefix + array_checkpoint.SUFFIX)
  if not os.path.exists(prefix + ".index"):
    return f"{prefix}.index is missing"
  import tensorflow as tf
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except  (any read failure means "damaged")
    return f"TensorFlow cannot read it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
  return None


def _listed_checkpoints(directory: str) -> List[str]:
  """Checkpoint prefixes, oldest first: the Keras-native loop's files, else tf.train's state
  file, else the index files found."""
  arrays = array_checkpoints(directory)
  if arrays:
    return arrays
  if os.path.exists(os.path.join(directory, "checkpoint")):
    import tensorflow as tf
    try:
      state = tf.train.get_checkpoint_state(directory)
    except Exception:  # pylint: disable=broad-except  (a damaged state file: fall back to a scan)
      state = None
    if state is not None and state.all_model_checkpoint_paths:
      return [p if os.path.isabs(p) else os.path.join(directory, p)
              for p in state.all_model_checkpoint_paths]
  found = [p[:-len(".index")] for p in glob.glob(os.path.join(directory, "*.index"))]
  return sorted(found, key=_step_of)


def newest_intact_checkpoint(directory: str) -> Optional[str]:
  """The newest checkpoint that passes `checkpoint_problem`; damaged newer ones are moved to
  `directory/damaged/` (never deleted) with a warning naming them. Raises RunFolderError naming
  every damaged file when checkpoints exist but none is intact."""
  candidates = _listed_checkpoints(directory)
  damaged = []
  while candidates:
    prefix = candidates.pop()
    problem = checkpoint_problem(prefix)
    if problem is None:
      if damaged and not os.path.exists(prefix + array_checkpoint.SUFFIX):  # tf.train's state file
        import tensorflow as tf
        tf.compat.v1.train.update_checkpoint_state(directory, prefix,
                                                   all_model_checkpoint_paths=candidates + [prefix])
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


def remove_partial_writes(folder: str) -> None:
  """Deletes what an interrupted write left: TF's `*_temp*` checkpoint folders, our `*.tmp`."""
  patterns = [os.path.join(folder, "checkpoints", "*_temp*"), os.path.join(folder, "*.tmp"),
              os.path.join(folder, "*.tmp.keras"), os.path.join(folder, "checkpoints", "*.tmp")]
  for pattern in patterns:
    for path in glob.glob(pattern):
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def check_resumable(path: str, config) -> None:
  """Raises ValueError naming the flags that differ from the run already in `path`."""
  saved = os.path.join(path, "config.json")
  if not os.path.exists(saved):
    return
  with open(saved) as f:
    previous = json.load(f)
  differing = [k for k in RESUME_KEYS if k in previous and previous[k] != getattr(config, k)]
  if differing:
    details = ", ".join(f"--{k}: {previous[k]!r} there, {getattr(config, k)!r} now"
                        for k in differing)
    raise ValueError(f"{path} holds a run with other flags ({details}). Use another "
                     "--output_dir, or --overwrite to delete that run.")


class RunDir:
  """One run's output folder, as seen by one worker (only the chief keeps what it writes)."""

  def __init__(self, path: str, chief: bool = True, worker: int = 0,
               lock: Optional[RunLock] = None):
    self.path = path
    self.chief = chief
    self.worker = worker
    self.lock = lock

  @classmethod
  def prepare(cls, config, chief: bool = True, worker: int = 0) -> "RunDir":
    """Takes the folder's lock, checks that a run already there is compatible (--overwrite
    deletes it), and clears what an interrupted write left. Raises ValueError (bad flags,
    unwritable) or RunFolderError (another run holds the folder) before changing anything."""
    path = config.output_dir
    if not chief:
      os.makedirs(path, exist_ok=True)
      return cls(path, chief, worker)
    if not config.overwrite:
      check_resumable(path, config)
    try:
      os.makedirs(path, exist_ok=True)
      lock = RunLock(path)
    except OSError as e:
      raise ValueError(f"--output_dir={path!r} is not writable: {e}") from None
    try:
      if config.overwrite:
        for entry in os.scandir(path):
          if entry.name != LOCK_FILE:
            shutil.rmtree(entry.path) if entry.is_dir() else os.remove(entry.path)
      remove_partial_writes(path)
    except BaseException:
      lock.release()
      raise
    return cls(path, chief, worker, lock)

  def release(self) -> None:
    """Releases the folder's lock (the process ending does it too)."""
    if self.lock is not None:
      self.lock.release()

  def guarded(self, name: str, write: Callable[[], object]):
    """Runs `write`; a failure (full disk, permission lost, read-only file system) becomes one
    RunFolderError naming the folder, the file and the free space."""
    try:
      return write()
    except _write_errors() as e:
      remove_partial_writes(self.path)
      try:
        free = f"{shutil.disk_usage(self.path).free / 2**20:.1f} MiB free"
      except OSError:
        free = "free space unknown"
      reason = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
      raise RunFolderError(
          f"Cannot write {name} in {self.path} ({reason.splitlines()[0]}; {free}). The last "
          f"good checkpoint stays the latest: {self.latest_checkpoint()}.") from None

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    return self.file("checkpoints")

  def write_run_files(self, config, info) -> None:
    """flags.txt, config.json and data_info.json: what evaluate / export need to read the run."""
    if not self.chief:
      return
    for name, text in (("flags.txt", config.as_flagfile()), ("config.json", config.to_json()),
                       ("data_info.json", info.to_json())):
      self.guarded(name, lambda: write_text_atomic(self.file(name), text))

  # -- Checkpoints ------------------------------------------------------------------------------

  def checkpoint_manager(self, checkpoint, keep: int):
    """A CheckpointManager over the verified checkpoints (damaged newest ones moved aside first).

    Every worker restores from the chief's checkpoints/; other workers must take part in the
    (collective) save, so they write throw-away copies that `save` deletes.
    """
    if self.chief and os.path.isdir(self.checkpoint_dir):
      newest_intact_checkpoint(self.checkpoint_dir)
    if self.chief and array_checkpoints(self.checkpoint_dir):
      raise RunFolderError(
          f"{self.checkpoint_dir} holds checkpoints of the Keras-native loop (*.weights.npz, "
          f"written under another Keras backend); resume there, or start over with --overwrite.")
    directory = self.checkpoint_dir if self.chief else self.file(f"tmp_worker_{self.worker}")
    import tensorflow as tf
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)

  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint prefix of either loop (not verified), or None."""
    arrays = array_checkpoints(self.checkpoint_dir)
    if arrays:
      return arrays[-1]
    if not os.path.exists(os.path.join(self.checkpoint_dir, "checkpoint")):
      return None
    import tensorflow as tf
    return tf.train.latest_checkpoint(self.checkpoint_dir)

  def restore(self, checkpoint) -> Optional[str]:
    """Restores the latest checkpoint (verified when the manager was made); returns its path."""
    latest = self.latest_checkpoint()
    if latest:
      checkpoint.restore(latest).assert_existing_objects_matched()
    return latest

  def save(self, manager, step: int) -> str:
    """Saves a checkpoint and its checksums (`.sha256`, checked before it is restored)."""
    if not self.chief:
      path = manager.save(checkpoint_number=step)
      shutil.rmtree(manager.directory, ignore_errors=True)
      return path

    def write():
      path = manager.save(checkpoint_number=step)
      write_checksums(path)
      for sidecar in glob.glob(os.path.join(self.checkpoint_dir, "*.sha256")):
        if not os.path.exists(sidecar[:-len(".sha256")] + ".index"):
          os.remove(sidecar)  # The manager deleted that checkpoint (keep_checkpoints).
      return path
    # A kill between the save and its checksums leaves a checkpoint without a sidecar, which
    # resume then verifies by reading every tensor.
    return self.guarded(f"checkpoints/ckpt-{step}", write)

  # -- History, results, models -----------------------------------------------------------------

  def load_history(self, step: int) -> List[Dict]:
    """history.json entries up to `step` (later ones belong to steps the checkpoint lost)."""
    path = self.file("history.json")
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [h for h in json.load(f) if h["step"] <= step]

  def save_history(self, history: List[Dict]) -> None:
    if self.chief:
      self.guarded("history.json", lambda: write_json_atomic(self.file("history.json"), history))

  def write_results(self, results: Dict) -> None:
    """results.json, written last: its presence means every artifact of the run is complete."""
    if self.chief:
      self.guarded("results.json", lambda: write_json_atomic(self.file("results.json"), results))

  def write_models(self, model, info, ensemble: str) -> None:
    """model.keras, model_folded.keras (one stem, same function) and the SavedModel, each
    written to a temporary name and renamed: a kill leaves the previous file or none."""
    if not self.chief:
      return
    for name, net in (("model.keras", model), ("model_folded.keras", model.folded())):
      self.guarded(name, lambda: save_keras_atomic(net, self.file(name)))
    import keras
    if keras.backend.backend() == "tensorflow":
      from mixmo_tf import export
      self.guarded("saved_model", lambda: export.export_saved_model(
          model, info, self.file("saved_model"), ensemble=ensemble))

  # -- The Keras-native loop's checkpoints ------------------------------------------------------

  def save_arrays(self, groups, step: int, keep: int) -> str:
    """Saves `groups` ({name: [variables]}) as checkpoints/ckpt-<step>.weights.npz with its
    `.sha256`, then deletes the oldest beyond `keep`; a failed write -> RunFolderError."""
    prefix = os.path.join(self.checkpoint_dir, f"ckpt-{step}")

    def write():
      os.makedirs(self.checkpoint_dir, exist_ok=True)
      array_checkpoint.save(prefix + array_checkpoint.SUFFIX, groups)
      write_checksums(prefix)
      for old in array_checkpoints(self.checkpoint_dir)[:-keep] if keep else []:
        for path in checkpoint_files(old) + [old + ".sha256"]:
          if os.path.exists(path):
            os.remove(path)
      return prefix
    return self.guarded(f"checkpoints/ckpt-{step}{array_checkpoint.SUFFIX}", write)

  def restore_arrays(self, groups) -> Optional[str]:
    """Loads the newest intact `.weights.npz` checkpoint into `groups` (damaged newer ones moved
    to checkpoints/damaged/); returns its prefix, or None when there is none."""
    if not os.path.isdir(self.checkpoint_dir):
      return None
    if glob.glob(os.path.join(self.checkpoint_dir, "*.index")):
      raise RunFolderError(
          f"{self.checkpoint_dir} holds tf.train checkpoints of the TensorFlow loop; resume with "
          f"KERAS_BACKEND=tensorflow, or start over with --overwrite.")
    prefix = newest_intact_checkpoint(self.checkpoint_dir)
    if prefix:
      array_checkpoint.load(prefix + array_checkpoint.SUFFIX, groups)
    return prefix

  def summary_writer(self):
    import tensorflow as tf
    return tf.summary.create_file_writer(
        self.file("tensorboard" if self.chief else "tmp_tensorboard"))


def _write_errors() -> tuple:
  """What a failed write raises: OSError, and TensorFlow's OpError once TensorFlow is loaded."""
  import sys
  tf = sys.modules.get("tensorflow")
  return (OSError, tf.errors.OpError) if tf is not None and hasattr(tf, "errors") else (OSError,)


def write_text_atomic(path: str, text: str) -> None:
  tmp = path + TMP_SUFFIX
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def save_keras_atomic(model, path: str) -> None:
  tmp = path[:-len(".keras")] + ".tmp.keras"
  model.save(tmp)
  os.replace(tmp, path)


def log_resumed(path: Optional[str], step: int) -> None:
  if path:
    logging.info("Resumed from %s at step %d.", path, step)

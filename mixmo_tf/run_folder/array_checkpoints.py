"""The Keras engine's checkpoint format: every variable of a run in one `.weights.npz` file.

Backend-agnostic (NumPy's zip format, no TensorFlow): the network's weights and BatchNorm moving
statistics, the trainer's step counter and the optimizer's variables (iterations, momenta), in
groups. Written to a temporary file, flushed and renamed, so a kill leaves the previous file or
none; reading checks every array's zip CRC, so damage is found before anything is assigned.
Variables are matched by position and shape within each group (auto-generated layer names
differ from one process to the next); the saved paths are kept to name a mismatch.
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
from typing import Dict, List, Sequence

import numpy as np

SUFFIX = ".weights.npz"
_PATHS = "__paths__"


def step_of(prefix: str) -> int:
  """The step N of a checkpoint prefix `.../ckpt-N` (-1 if it has none)."""
  tail = prefix.rsplit("-", 1)[-1]
  return int(tail) if tail.isdigit() else -1


def prefixes(directory: str) -> List[str]:
  """Prefixes (`.../ckpt-N`) of the `.weights.npz` checkpoints in `directory`, oldest first."""
  found = glob.glob(os.path.join(directory, "*" + SUFFIX))
  return sorted((p[:-len(SUFFIX)] for p in found), key=step_of)


def _variable_arrays(groups: Dict[str, Sequence]) -> Dict[str, np.ndarray]:
  import keras
  arrays = {}
  for group, variables in groups.items():
    for i, v in enumerate(variables):
      arrays[f"{group}/{i:05d}"] = np.asarray(keras.ops.convert_to_numpy(v.value))
  return arrays


def save(path: str, groups: Dict[str, Sequence]) -> None:
  """Writes the values of `groups` ({name: [keras.Variable]}) to `path`, atomically."""
  arrays = _variable_arrays(groups)
  paths = {group: [getattr(v, "path", v.name) for v in variables]
           for group, variables in groups.items()}
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays, **{_PATHS: np.array(json.dumps(paths))})
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read(path: str) -> Dict[str, np.ndarray]:
  """Every array of the file (each checked against its zip CRC); errors propagate."""
  with np.load(path, allow_pickle=False) as data:
    return {name: data[name] for name in data.files}


def problem(path: str):
  """Why the file cannot be read (missing, truncated, a CRC mismatch), or None."""
  if not os.path.exists(path):
    return f"{path} is missing"
  try:
    read(path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    return f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
  return None


def load(path: str, groups: Dict[str, Sequence], partial: bool = False) -> None:
  """Assigns the saved values to `groups`; ValueError naming the first variable whose count or
  shape differs (a checkpoint of another network or optimizer), before assigning anything.
  `partial`: groups of the file not asked for are ignored (e.g. the network alone)."""
  arrays = read(path)
  saved_paths = json.loads(str(arrays.pop(_PATHS)))
  missing = sorted(set(groups) - set(saved_paths))
  if missing or (not partial and set(saved_paths) != set(groups)):
    raise ValueError(f"{path} holds the groups {sorted(saved_paths)}, expected "
                     f"{sorted(groups)}.")
  for group, variables in groups.items():
    names = sorted(k for k in arrays if k.startswith(group + "/"))
    if len(names) != len(variables):
      raise ValueError(f"{path} holds {len(names)} {group} variables, this run has "
                       f"{len(variables)}: it was written by another configuration.")
    for i, v in enumerate(variables):
      saved = arrays[f"{group}/{i:05d}"]
      if tuple(saved.shape) != tuple(v.shape):
        raise ValueError(f"{path}: {group} variable {i} ({saved_paths[group][i]}) has shape "
                         f"{saved.shape}, this run's ({getattr(v, 'path', v.name)}) "
                         f"{tuple(v.shape)}.")
  for group, variables in groups.items():
    for i, v in enumerate(variables):
      v.assign(arrays[f"{group}/{i:05d}"].astype(v.dtype))

"""Atomic replacement of files and directories: a reader sees the old complete version or the new.

Files are written under a temporary name and renamed over the final one (`os.replace` is atomic
on POSIX). Directories cannot be renamed over a non-empty one, so `replace_directory` renames the
old version aside (`<path>.old`), renames the new one in, then removes the aside copy; a kill
between the two renames leaves no `<path>`, and `recover` renames the aside copy back: run by
`replace_directory` itself, by a training run's start (`RunFolder.prepare`) and by every reader
that opens a run no writer holds (`RunFolder.open`).
"""

from __future__ import annotations

import json
import os
import shutil

TMP_SUFFIX = ".tmp"
ASIDE_SUFFIX = ".old"


def write_text_atomic(path: str, text: str) -> None:
  tmp = path + TMP_SUFFIX
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, payload) -> None:
  """JSON to a temporary file renamed over `path`."""
  write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def save_keras_atomic(model, path: str) -> None:
  """`model.save` to `<name>.tmp.keras`, renamed over `path` (Keras wants the .keras suffix)."""
  tmp = path[:-len(".keras")] + TMP_SUFFIX + ".keras"
  model.save(tmp)
  os.replace(tmp, path)


def recover(path: str) -> None:
  """Completes an interrupted `replace_directory`: restores the aside copy where `path` is
  missing, deletes it where `path` (the new complete version) exists."""
  aside = path + ASIDE_SUFFIX
  if os.path.lexists(aside):
    if os.path.lexists(path):
      shutil.rmtree(aside, ignore_errors=True)
    else:
      os.replace(aside, path)


def replace_directory(tmp: str, path: str) -> None:
  """Replaces directory `path` by the complete directory `tmp`: old aside, new in, aside removed."""
  recover(path)
  aside = path + ASIDE_SUFFIX
  if os.path.lexists(path):
    os.replace(path, aside)
  os.replace(tmp, path)
  shutil.rmtree(aside, ignore_errors=True)

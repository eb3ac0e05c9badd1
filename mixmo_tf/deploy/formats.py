"""The deployment formats, their artifacts and what exporting each needs (this module imports
neither TensorFlow nor the converters: it only names them).

Every artifact serves the same function (`tf_serving`): one input `images`, uint8 [N, H, W, 3]
with any N, and two outputs, `probs` (the ensemble [N, K], by the run's --ensemble rule) and
`member_probs` [N, M, K], the dataset's normalisation inside. Exporting each format needs
TensorFlow (`mixmo_tf.export` checks it first) and the modules named here, which the optional
extra `export` installs: the converter and the runtime the artifact is checked in after writing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Dict, List, Sequence, Tuple

from mixmo_tf.run_folder.atomic import TMP_SUFFIX

INPUT = "images"
OUTPUTS = ("probs", "member_probs")
INSTALL = 'pip install -e ".[export]"'


@dataclasses.dataclass(frozen=True)
class Format:
  """One deployment format: its artifact's name in the export folder, the modules exporting and
  checking it need beyond TensorFlow, and the runtime that serves it."""
  name: str
  artifact: str
  modules: Tuple[str, ...]
  runtime: str


FORMATS: Dict[str, Format] = {
    "saved_model": Format("saved_model", "saved_model", (), "TensorFlow, TF Serving"),
    "onnx": Format("onnx", "model.onnx", ("tf2onnx", "onnx", "onnxruntime"), "ONNX Runtime"),
    # Converted by TensorFlow's TFLiteConverter; checked with ai-edge-litert where installed, else
    # with TensorFlow's own interpreter.
    "litert": Format("litert", "model.tflite", (), "LiteRT (ai-edge-litert)"),
}
DEFAULT_FORMATS = ("saved_model", "onnx", "litert")


def parse_formats(names: Sequence[str]) -> Tuple[str, ...]:
  """The distinct format names of `names` in order; ValueError naming an unknown or no format."""
  chosen = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
  unknown = [n for n in chosen if n not in FORMATS]
  if unknown or not chosen:
    raise ValueError(f"--format={','.join(names)!s} is not valid: expected one or more of "
                     f"{', '.join(FORMATS)}, comma-separated.")
  return chosen


def importable(module: str) -> bool:
  """Whether `module` can be imported here, without importing it."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def missing_modules(formats: Sequence[str]) -> List[str]:
  """The modules that exporting `formats` needs and that are not importable here."""
  needed = dict.fromkeys(m for f in formats for m in FORMATS[f].modules)
  return [m for m in needed if not importable(m)]


def check_requirements(formats: Sequence[str]) -> None:
  """ValueError, one line naming the missing modules and what to install, if any is missing."""
  missing = missing_modules(formats)
  if missing:
    needing = [f for f in formats if set(FORMATS[f].modules) & set(missing)]
    others = [f for f in formats if f not in needing]
    hint = f" (or --format={','.join(others)})" if others else ""
    raise ValueError(f"--format={','.join(needing)} needs {', '.join(missing)}, not importable "
                     f"here: {INSTALL}{hint}.")


def artifact_paths(export_dir: str, formats: Sequence[str]) -> Dict[str, str]:
  """{format: path of its artifact in `export_dir`}."""
  return {f: os.path.join(export_dir, FORMATS[f].artifact) for f in formats}


def write_bytes_atomic(path: str, data: bytes) -> None:
  """`data` to `<path>.tmp`, flushed to disk, renamed over `path` (a reader sees the old complete
  file or the new one; a run folder's `.tmp` leftovers are removed by `RunFolder`)."""
  tmp = path + TMP_SUFFIX
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)

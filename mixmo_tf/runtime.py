"""Platform set-up: oneDNN and log-level defaults, CPU detection, precision choice.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS and TF_CPP_MIN_LOG_LEVEL once, when it is first imported.
`mixmo_tf/__init__.py` therefore calls `configure_tensorflow_env()` before anything imports
TensorFlow, on every entry path (`python -m mixmo_tf.train` imports the package first). In your
own scripts, import mixmo_tf before tensorflow or keras, or export the variables yourself:

    import mixmo_tf          # first: turns oneDNN on unless TF_ENABLE_ONEDNN_OPTS is set
    import tensorflow as tf

This module itself imports neither TensorFlow nor Keras: the package's `__init__` runs it before
Keras (and so TensorFlow) loads.

Defaults, each applied only when the variable is unset or empty (a value of yours always wins):
  TF_ENABLE_ONEDNN_OPTS=1: TensorFlow's oneDNN kernels, which TF 2.21 enables by itself only on
    Linux CPUs with AVX-512 VNNI / BF16, AVX-VNNI or AMX.
  TF_CPP_MIN_LOG_LEVEL=1: hides TensorFlow's C++ INFO lines, keeps its warnings and errors.
    TF 2.21 writes its start-up lines (twice: two of its libraries carry a logger each) before the
    variable applies, so `quiet_tensorflow_import`, around the package's TensorFlow import, drops
    from them what level 1 hides, absl's "All log messages before absl::InitializeLog()" banner
    and, once TensorFlow has said it found no CUDA driver, cuInit's expected failure. Every other
    line reaches stderr. With your own TF_CPP_MIN_LOG_LEVEL nothing is filtered.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform as _stdlib_platform
import re
import sys
import tempfile
from typing import Dict, FrozenSet, Iterator, Optional

ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_ONEDNN = "1"
DEFAULT_LOG_LEVEL = "1"
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

# TensorFlow 2.21's DefaultOneDnnPolicy (tensorflow/core/util/util.cc): on by default on Linux for
# these x86 features (/proc/cpuinfo names) or an Arm Neoverse V1 (implementer 0x41, part 0xd40).
_ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                         "amx_bf16")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# A C++ log line, as absl writes it ("I0000 00:00:1795.0  123 port.cc:153] ...") or as older
# TensorFlow releases did ("2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...").
_GLOG_LINE = re.compile(rb"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |"
                        rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )[\w.\-/]+:\d+\] ")
_CUDA_STUB = rb"Could not find cuda drivers on your machine"
# Start-up lines that TF_CPP_MIN_LOG_LEVEL cannot hide, none about what runs: the banner absl
# prints before its logging is initialised and the second line of the CPU-feature notice (INFO).
# cuInit's failure is dropped only after TensorFlow said it found no CUDA driver.
_STARTUP_NOISE = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow"),
)
_CUINIT_FAILURE = re.compile(rb"\] failed call to cuInit")


class State:
  """What `configure_tensorflow_env` found and did, for `onednn_enabled` and the log line."""
  configured = False
  tensorflow_imported_first = False
  onednn_value: Optional[str] = None  # The user's value (None: unset), as seen at configure time.
  onednn_set_by_user = False
  log_level_set_by_user = False
  logged = False


def _env_value(name: str) -> Optional[str]:
  """The variable's value, None when unset or empty (TensorFlow treats empty as unset)."""
  value = os.environ.get(name)
  return value if value else None


def configure_tensorflow_env() -> None:
  """Sets TF_ENABLE_ONEDNN_OPTS=1 and TF_CPP_MIN_LOG_LEVEL=1 unless set, before TensorFlow loads.

  Records whether TensorFlow was already imported (then the oneDNN setting cannot take effect and
  `log_environment_once` says so) and which variables the user set. Only the first call acts.
  """
  if State.configured:
    return
  State.configured = True
  State.tensorflow_imported_first = sys.modules.get("tensorflow") is not None
  State.onednn_value = _env_value(ONEDNN_VAR)
  State.onednn_set_by_user = State.onednn_value is not None
  State.log_level_set_by_user = _env_value(LOG_LEVEL_VAR) is not None
  if not State.onednn_set_by_user:
    os.environ[ONEDNN_VAR] = DEFAULT_ONEDNN
  if not State.log_level_set_by_user:
    os.environ[LOG_LEVEL_VAR] = DEFAULT_LOG_LEVEL


def tensorflow_imported_first() -> bool:
  """True when TensorFlow was imported before mixmo_tf configured the environment."""
  return State.tensorflow_imported_first


def onednn_setting_came_too_late() -> bool:
  """True when TensorFlow, imported before mixmo_tf with TF_ENABLE_ONEDNN_OPTS unset, left
  oneDNN off where mixmo_tf would have turned it on."""
  return (State.tensorflow_imported_first and not State.onednn_set_by_user
          and onednn_built() and not onednn_enabled())


# ---------------------------------------------------------------------------------------------
# CPU detection (Linux /proc/cpuinfo; empty or generic elsewhere).


@functools.lru_cache(maxsize=None)
def cpu_info() -> Dict[str, str]:
  """The first value of each key of /proc/cpuinfo ({} where there is none)."""
  fields: Dict[str, str] = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        key, sep, value = line.partition(":")
        if sep:
          fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return fields


def cpu_flags() -> FrozenSet[str]:
  """The CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on Arm); empty
  elsewhere."""
  info = cpu_info()
  return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
  """A human-readable CPU name, e.g. "Intel(R) Xeon(R) Processor"."""
  info = cpu_info()
  for key in ("model name", "Model", "Hardware", "cpu model"):
    if info.get(key):
      return info[key]
  if info.get("CPU implementer"):
    return f"Arm implementer {info['CPU implementer']} part {info.get('CPU part', '?')}"
  return _stdlib_platform.processor() or _stdlib_platform.machine() or "unknown CPU"


def has_native_bf16() -> bool:
  """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16)."""
  flags = cpu_flags()
  return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


def onednn_built() -> bool:
  """Whether TensorFlow's wheels for this OS and machine are built with oneDNN (INTEL_MKL)."""
  machine = _stdlib_platform.machine().lower()
  if sys.platform.startswith("linux"):
    return machine in ("x86_64", "amd64", "aarch64", "arm64")
  return sys.platform == "win32" and machine in ("x86_64", "amd64")


def _onednn_default() -> bool:
  """TensorFlow 2.21's own default when TF_ENABLE_ONEDNN_OPTS is unset (Linux only)."""
  if not sys.platform.startswith("linux"):
    return False
  info = cpu_info()
  neoverse_v1 = info.get("CPU implementer") == "0x41" and info.get("CPU part") == "0xd40"
  return neoverse_v1 or any(flag in cpu_flags() for flag in _ONEDNN_DEFAULT_FLAGS)


def _parse_onednn(value: Optional[str]) -> bool:
  """TensorFlow's reading of the variable: 0/false, 1/true (any case), else its default."""
  if value is not None and value.lower() in ("0", "false"):
    return False
  if value is not None and value.lower() in ("1", "true"):
    return True
  return _onednn_default()


def _onednn_value_seen_by_tensorflow() -> Optional[str]:
  """TF_ENABLE_ONEDNN_OPTS as TensorFlow reads (or read) it at its import."""
  if State.configured and State.tensorflow_imported_first:
    return State.onednn_value  # TensorFlow read it before mixmo_tf could set it.
  return _env_value(ONEDNN_VAR)


def onednn_enabled() -> bool:
  """Whether TensorFlow's oneDNN kernels are (or will be, at its import) on in this process."""
  return onednn_built() and _parse_onednn(_onednn_value_seen_by_tensorflow())


def onednn_source() -> str:
  """Who decided the oneDNN setting, in words for the log."""
  if not State.configured:
    return "mixmo_tf has not configured the environment"
  if State.tensorflow_imported_first and not State.onednn_set_by_user:
    return "TensorFlow's default for this CPU"
  return "set by you" if State.onednn_set_by_user else "set by mixmo_tf"


def tensorflow_importable(module: str = "tensorflow") -> bool:
  """Whether TensorFlow (and `module`, e.g. tensorflow_datasets) can be imported here, without
  importing it: what the features that need TensorFlow check before refusing (any backend)."""
  import importlib.util
  for name in dict.fromkeys(("tensorflow", module)):
    try:
      if importlib.util.find_spec(name) is None:
        return False
    except (ImportError, ValueError):
      return False
  return True


# ---------------------------------------------------------------------------------------------
# Precision.


def resolve_precision(requested: str, backend: str = "tensorflow",
                      accelerator: bool = False) -> str:
  """The Keras dtype policy for `--precision=requested`; "auto" picks per device.

  "auto": mixed_bfloat16 on a GPU or TPU (`accelerator`, detected by the caller); on CPU,
  mixed_bfloat16 only for the TensorFlow backend with oneDNN on and a CPU with native bf16
  (AVX512_BF16 or AMX), where it is faster; float32 elsewhere. Other values are returned unchanged.

  Raises:
    ValueError: `requested` is not one of PRECISIONS.
  """
  if requested not in PRECISIONS:
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}.")
  if requested != "auto":
    return requested
  if accelerator:
    return "mixed_bfloat16"
  if backend == "tensorflow" and onednn_enabled() and has_native_bf16():
    return "mixed_bfloat16"
  return "float32"


def precision_reason(requested: str, backend: str = "tensorflow",
                     accelerator: bool = False) -> str:
  """Why `resolve_precision` chose what it chose, in a few words for the log."""
  if requested != "auto":
    return "requested"
  if accelerator:
    return "auto: GPU/TPU"
  if backend != "tensorflow":
    return f"auto: CPU with the {backend} backend"
  if not onednn_enabled():
    return "auto: CPU with oneDNN off"
  bf16 = "native bf16" if has_native_bf16() else "no native bf16"
  return f"auto: CPU with oneDNN on, {bf16}"


# ---------------------------------------------------------------------------------------------
# Logging.


def environment() -> Dict[str, object]:
  """The settings this process runs with, for logs and benchmark JSON."""
  return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "native_bf16": has_native_bf16(),
          "onednn": onednn_enabled(), "onednn_source": onednn_source(),
          "tf_enable_onednn_opts": _onednn_value_seen_by_tensorflow(),
          "tf_cpp_min_log_level": os.environ.get(LOG_LEVEL_VAR),
          "tensorflow_imported_first": State.tensorflow_imported_first}


def environment_line() -> str:
  """One line: oneDNN on/off and why, and the CPU."""
  value = _onednn_value_seen_by_tensorflow()
  state = "on" if onednn_enabled() else "off"
  setting = f"{ONEDNN_VAR}={value}" if value is not None else f"{ONEDNN_VAR} unset"
  line = (f"oneDNN {state} ({setting}, {onednn_source()}); CPU: {cpu_model()}, "
          f"native bf16: {'yes' if has_native_bf16() else 'no'}.")
  if State.tensorflow_imported_first and not State.onednn_set_by_user:
    line += (f" TensorFlow was imported before mixmo_tf: {ONEDNN_VAR} could not take effect; "
             f"import mixmo_tf first or export {ONEDNN_VAR}={DEFAULT_ONEDNN}.")
  return line


def log_environment_once() -> bool:
  """Logs `environment_line()` once per process (absl logging; WARNING when
  `onednn_setting_came_too_late`, else INFO). Returns whether it logged now."""
  if State.logged:
    return False
  State.logged = True
  from absl import logging  # absl-py is TensorFlow-free.
  log = logging.warning if onednn_setting_came_too_late() else logging.info
  log("%s", environment_line())
  return True


def use_absl_handler_for_tensorflow() -> None:
  """Removes the stderr handler TensorFlow gives its Python logger when it is created before absl
  installs its own (at app.run), so that TensorFlow's INFO lines are not printed twice."""
  import logging
  if not logging.getLogger().handlers:  # Nobody else would print TensorFlow's lines.
    return
  tf_logger = logging.getLogger("tensorflow")
  for handler in list(tf_logger.handlers):
    formatter = handler.formatter
    if (type(handler) is logging.StreamHandler and formatter is not None
        and formatter._fmt == logging.BASIC_FORMAT):  # pylint: disable=protected-access
      tf_logger.removeHandler(handler)  # tf_logging.get_logger's, as it adds it.


# ---------------------------------------------------------------------------------------------
# Start-up noise.


def _keep_line(line: bytes, min_level: int, no_cuda_driver: bool) -> bool:
  """Whether a captured stderr line written while TensorFlow loaded reaches the user."""
  if any(pattern.search(line) for pattern in _STARTUP_NOISE):
    return False
  if no_cuda_driver and _CUINIT_FAILURE.search(line):
    return False
  match = _GLOG_LINE.match(line)
  return not match or "IWEF".index((match.group(1) or match.group(2)).decode()) >= min_level


def filter_startup_lines(text: bytes, min_level: int = int(DEFAULT_LOG_LEVEL)) -> bytes:
  """`text` without TensorFlow's start-up noise and without glog lines below `min_level`
  (0 INFO .. 3 FATAL): what TF_CPP_MIN_LOG_LEVEL would have hidden had it applied."""
  no_cuda_driver = _CUDA_STUB in text
  lines = text.splitlines(keepends=True)
  return b"".join(l for l in lines if _keep_line(l, min_level, no_cuda_driver))


@contextlib.contextmanager
def quiet_tensorflow_import(probe_devices: bool = True) -> Iterator[None]:
  """Runs the block (which imports TensorFlow) with stderr captured, then replays all of it but
  the start-up noise (`filter_startup_lines`).

  Acts only when mixmo_tf set TF_CPP_MIN_LOG_LEVEL and TensorFlow is not yet imported. With
  `probe_devices`, on a machine where TensorFlow found no CUDA driver, lists the physical devices
  inside the block so that cuInit's expected failure is dropped too (cheap, and
  `tf.config.set_visible_devices` / memory growth stay allowed after it).
  """
  if (not State.configured or State.log_level_set_by_user
      or sys.modules.get("tensorflow") is not None):
    yield
    return
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (AttributeError, OSError, ValueError):  # No usable stderr: nothing to filter.
    yield
    return
  capture = tempfile.TemporaryFile(buffering=0)  # Unbuffered: reads see what fd 2 wrote.
  os.dup2(capture.fileno(), 2)
  try:
    yield
    tf = sys.modules.get("tensorflow")
    if probe_devices and tf is not None and _CUDA_STUB in _read_all(capture):
      tf.config.list_physical_devices()
  finally:
    with contextlib.suppress(Exception):
      sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    kept = filter_startup_lines(_read_all(capture))
    capture.close()
    while kept:
      kept = kept[os.write(2, kept):]


def _read_all(capture) -> bytes:
  """Everything written to the capture file so far (fd 2 shares its offset: restore it)."""
  end = capture.seek(0, os.SEEK_END)
  capture.seek(0)
  text = capture.read()
  capture.seek(end)
  return text

"""mixmo_tf.runtime: environment defaults before TensorFlow loads, quiet start, precision."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from mixmo_tf import runtime
from tests.conftest import REPO

NOISE = ("absl::InitializeLog", "port.cc", "cudart_stub.cc", "cpu_feature_guard.cc", "cuInit")

# Records TF_ENABLE_ONEDNN_OPTS at the moment `import tensorflow` starts, then imports as usual.
ENV_AT_TF_IMPORT = textwrap.dedent("""
    import os, sys
    seen = {}
    class Probe:
      def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and "onednn" not in seen:
          seen["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        return None
    sys.meta_path.insert(0, Probe())
""")


def run_python(code: str, **env_overrides):
  """Runs `code` in a fresh interpreter with the two variables unset unless given."""
  env = {k: v for k, v in os.environ.items()
         if k not in (runtime.ONEDNN_VAR, runtime.LOG_LEVEL_VAR)}
  env.update(PYTHONPATH=str(REPO), **env_overrides)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_import_sets_onednn_before_tensorflow_and_starts_quietly():
  proc = run_python(ENV_AT_TF_IMPORT + textwrap.dedent("""
      import json, os
      import mixmo_tf
      import tensorflow as tf
      from tensorflow.python.util import _pywrap_util_port
      tf.config.list_physical_devices()
      print(json.dumps({"at_tf_import": seen["onednn"], "log_level": os.environ[
          "TF_CPP_MIN_LOG_LEVEL"], "tf_mkl": _pywrap_util_port.IsMklEnabled(),
          "ours": mixmo_tf.runtime.onednn_enabled(),
          "line": mixmo_tf.runtime.environment_line()}))
  """))
  out = json.loads(proc.stdout.splitlines()[-1])
  assert out["at_tf_import"] == "1", out
  assert out["log_level"] == runtime.DEFAULT_LOG_LEVEL
  assert out["tf_mkl"] == out["ours"], out  # Our reading agrees with TensorFlow's.
  assert "set by mixmo_tf" in out["line"]
  assert not [l for l in proc.stderr.splitlines() if any(n in l for n in NOISE)], proc.stderr


def test_user_values_are_respected_and_runtime_imports_no_tensorflow():
  # runtime.py alone (the package's __init__ imports TensorFlow after configuring).
  proc = run_python(textwrap.dedent(f"""
      import importlib.util, json, os, sys
      spec = importlib.util.spec_from_file_location(
          "mixmo_tf.runtime", {str(REPO / "mixmo_tf" / "runtime.py")!r})
      runtime = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(runtime)
      runtime.configure_tensorflow_env()
      print(json.dumps({{"onednn": os.environ["TF_ENABLE_ONEDNN_OPTS"],
                        "log_level": os.environ["TF_CPP_MIN_LOG_LEVEL"],
                        "enabled": runtime.onednn_enabled(), "line": runtime.environment_line(),
                        "tf_loaded": "tensorflow" in sys.modules}}))
  """), TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
  out = json.loads(proc.stdout.splitlines()[-1])
  assert out["line"].startswith("oneDNN off (TF_ENABLE_ONEDNN_OPTS=0, set by you)"), out
  assert out == {"onednn": "0", "log_level": "3", "enabled": False, "line": out["line"],
                 "tf_loaded": False}, out


def test_tensorflow_imported_first_is_logged_once():
  # As on a CPU where TensorFlow leaves oneDNN off by default (AVX2 only): mixmo_tf's runtime
  # module is loaded first with that rule, then TensorFlow, then the package.
  proc = run_python(textwrap.dedent(f"""
      import importlib.util, sys
      spec = importlib.util.spec_from_file_location(
          "mixmo_tf.runtime", {str(REPO / "mixmo_tf" / "runtime.py")!r})
      runtime = importlib.util.module_from_spec(spec)
      sys.modules["mixmo_tf.runtime"] = runtime
      spec.loader.exec_module(runtime)
      runtime.cpu_flags = lambda: frozenset({'avx', 'avx2', 'fma'})  # An AVX2-only CPU.
      import tensorflow
      import mixmo_tf
      assert runtime.tensorflow_imported_first() and not runtime.onednn_enabled()
      print("again:", runtime.log_environment_once())
  """))
  assert "again: False" in proc.stdout
  lines = [l for l in proc.stderr.splitlines() if "TensorFlow was imported before mixmo_tf" in l]
  assert len(lines) == 1, proc.stderr
  assert "oneDNN off (TF_ENABLE_ONEDNN_OPTS unset, TensorFlow's default for this CPU)" in lines[0]
  assert "export TF_ENABLE_ONEDNN_OPTS=1" in lines[0]


@pytest.fixture
def cpu(monkeypatch):
  """Sets the CPU's flags and oneDNN state for in-process checks: cpu(flags, onednn)."""
  def set_cpu(flags, onednn=True):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(runtime, "onednn_enabled", lambda: onednn)
  return set_cpu


@pytest.mark.parametrize("flags, onednn, backend, accelerator, expected", [
    ((), True, "tensorflow", True, "mixed_bfloat16"),  # GPU / TPU.
    ((), False, "jax", True, "mixed_bfloat16"),
    (("avx512f", "avx512_bf16"), True, "tensorflow", False, "mixed_bfloat16"),
    (("amx_tile", "amx_bf16"), True, "tensorflow", False, "mixed_bfloat16"),
    (("avx2", "avx512f", "avx512_vnni"), True, "tensorflow", False, "float32"),  # No native bf16.
    (("avx512_bf16", "amx_bf16"), False, "tensorflow", False, "float32"),  # oneDNN off.
    (("avx512_bf16", "amx_bf16"), True, "jax", False, "float32"),
    (("avx512_bf16", "amx_bf16"), True, "torch", False, "float32"),
])
def test_resolve_precision_auto(cpu, flags, onednn, backend, accelerator, expected):
  cpu(flags, onednn)
  assert runtime.resolve_precision("auto", backend, accelerator) == expected
  assert runtime.precision_reason("auto", backend, accelerator).startswith("auto")


@pytest.mark.parametrize("requested", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_resolve_precision_explicit_values_unchanged(cpu, requested):
  for flags, accelerator in (((), False), (("amx_bf16",), False), ((), True)):
    cpu(flags)
    assert runtime.resolve_precision(requested, "jax", accelerator) == requested


def test_resolve_precision_names_a_bad_value():
  with pytest.raises(ValueError, match="'bfloat16'"):
    runtime.resolve_precision("bfloat16")


@pytest.mark.parametrize("value, flags, expected", [
    (None, ("avx2", "fma"), False),  # TensorFlow's own default on an AVX2-only CPU.
    (None, ("avx2", "avx512_vnni"), True),
    (None, ("avx2", "amx_tile"), True),
    ("1", ("avx2",), True), ("TRUE", ("avx2",), True),
    ("0", ("amx_bf16",), False), ("false", ("amx_bf16",), False),
    ("yes", ("avx2",), False),  # Not 0/1/true/false: TensorFlow keeps its default.
])
def test_onednn_enabled_mirrors_tensorflow(monkeypatch, value, flags, expected):
  monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
  monkeypatch.setattr(runtime, "cpu_info", lambda: {})
  monkeypatch.setattr(runtime, "onednn_built", lambda: True)
  monkeypatch.setattr(runtime.sys, "platform", "linux")
  monkeypatch.setattr(runtime.State, "tensorflow_imported_first", False)
  if value is None:
    monkeypatch.delenv(runtime.ONEDNN_VAR, raising=False)
  else:
    monkeypatch.setenv(runtime.ONEDNN_VAR, value)
  assert runtime.onednn_enabled() is expected


def test_has_native_bf16(monkeypatch):
  for flags, expected in ((("avx512_bf16",), True), (("amx_bf16",), True),
                          (("avx512f", "avx512_vnni", "amx_tile"), False), ((), False)):
    monkeypatch.setattr(runtime, "cpu_flags", lambda f=flags: frozenset(f))
    assert runtime.has_native_bf16() is expected


def test_filter_startup_lines():
  text = (b"WARNING: All log messages before absl::InitializeLog() is called are written to "
          b"STDERR\n"
          b"I0000 00:00:1795892876.040408   24476 port.cc:153] oneDNN custom operations are on.\n"
          b"I0000 00:00:1795892876.041361   24476 cudart_stub.cc:31] Could not find cuda drivers "
          b"on your machine, GPU will not be used.\n"
          b"I0000 00:00:1795892876.096570   24476 cpu_feature_guard.cc:227] This binary\n"
          b"To enable the following instructions: AVX2 FMA, in other operations, rebuild "
          b"TensorFlow with the appropriate compiler flags.\n"
          b"E0000 00:00:1795893005.108477   26743 cuda_runtime.cc:52] failed call to cuInit: x\n"
          b"W0000 00:00:1795893006.059790   26743 dataset.cc:997] a real warning\n"
          b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] old\n"
          b"E0000 00:00:1795893005.108477   26743 other.cc:1] a real error\n"
          b"/x.py:3: UserWarning: a Python warning\n")
  assert runtime.filter_startup_lines(text) == (
      b"W0000 00:00:1795893006.059790   26743 dataset.cc:997] a real warning\n"
      b"E0000 00:00:1795893005.108477   26743 other.cc:1] a real error\n"
      b"/x.py:3: UserWarning: a Python warning\n")
  # With a CUDA driver present, a failing cuInit is a real error and stays.
  cuinit = b"E0000 00:00:1795893005.108477   26743 cuda_runtime.cc:52] failed call to cuInit\n"
  assert runtime.filter_startup_lines(cuinit) == cuinit


def test_use_absl_handler_for_tensorflow(monkeypatch):
  tf_logger, root = logging.getLogger("tensorflow"), logging.getLogger()
  ours = logging.StreamHandler()
  ours.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
  user = logging.StreamHandler()
  monkeypatch.setattr(tf_logger, "handlers", [ours, user])
  monkeypatch.setattr(root, "handlers", [])
  runtime.use_absl_handler_for_tensorflow()  # Nobody else prints: keep TensorFlow's handler.
  assert tf_logger.handlers == [ours, user]
  monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
  runtime.use_absl_handler_for_tensorflow()
  assert tf_logger.handlers == [user]


def test_environment_is_json():
  env = json.loads(json.dumps(runtime.environment()))
  assert {"cpu_model", "onednn", "onednn_source", "native_bf16"} <= set(env)

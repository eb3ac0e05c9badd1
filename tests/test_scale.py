"""Scale: MultiWorkerMirroredStrategy on loopback, bfloat16 and XLA training steps."""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import tf_engine_for, tiny_config, train_steps


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


@pytest.mark.slow
def test_multi_worker_two_processes_identical_weights_chief_checkpoints(tmp_path):
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  out = tmp_path / "run"
  args = [sys.executable, "-m", "mixmo_tf.train", "--strategy=multi_worker", "--dataset=digits",
          "--depth=10", "--width=1", "--num_members=2", "--batch_size=32",
          "--batch_repetitions=2", "--epochs=1", "--max_steps=6", "--log_every_steps=2",
          "--eval_frequency=10", f"--output_dir={out}"]
  procs = []
  try:
    for index in range(2):
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
                 TF_CONFIG=json.dumps({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}}))
      procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=420)[0] for p in procs]
  finally:
    for p in procs:  # always reap both, whatever happened
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  prints = [re.findall(r"Weights fingerprint (\w+) at step 6", log) for log in logs]
  assert prints[0] and prints[0] == prints[1], prints
  checkpoints = sorted(f.name for f in (out / "checkpoints").iterdir())
  assert "ckpt-6.index" in checkpoints
  leftovers = [p for p in out.glob("tmp_worker_*") if any(p.iterdir())]
  assert not leftovers, leftovers  # the non-chief's throw-away copies are gone
  results = json.loads((out / "results.json").read_text())
  assert results["global_step"] == 6 and results["engine"] == "custom"
  assert json.loads((out / "config.json").read_text())["strategy"] == "multi_worker"


@pytest.mark.parametrize("overrides", [dict(precision="mixed_bfloat16"), dict(jit_compile=True)],
                         ids=["bfloat16", "xla"])
def test_precision_and_xla_train_with_finite_decreasing_loss(overrides, tmp_path):
  engine, data, folder = tf_engine_for(tiny_config(
      tmp_path, log_every_steps=10, lr_warmup_epochs=0.1, base_learning_rate=0.8, **overrides))
  try:
    losses = np.array([loss for loss, _ in train_steps(engine, data, 60)])
  finally:
    folder.release()
  assert engine.global_step == 60
  assert len(losses) == 60 and np.all(np.isfinite(losses))
  assert losses[-20:].mean() < 0.95 * losses[:20].mean(), (losses[:20].mean(), losses[-20:].mean())
  assert np.polyfit(np.arange(60), losses, 1)[0] < 0  # a falling trend, not one lucky window
  if "precision" in overrides:
    assert engine.network.get_layer("group1_block1_conv1").compute_dtype == "bfloat16"
    assert engine.network.get_layer("heads").variable_dtype == "float32"
    assert all(v.dtype == "float32" for v in engine.network.trainable_variables)

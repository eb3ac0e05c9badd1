"""PyTorch-style SGD (docs/method.md §7): hand rule, LR changes, config, tf.distribute, torch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf.core.optimizers import OPTIMIZERS, PyTorchSGD, make_optimizer

L2 = 0.05
MOMENTUM = 0.9
LRS = (0.1, 0.1, 0.01)  # constant for two steps, then a decay
INIT = (np.array([0.5, -1.0, 2.0]), np.array([[1.0, -0.5], [0.25, 3.0]]))
# Per-step inputs x: loss = sum(w * x) + L2 * sum(w^2), so grad = x + 2 L2 w changes every step.
XS = [(np.array([1.0, 2.0, -1.0]) * (k + 1), np.array([[0.5, -1.0], [2.0, 0.3]]) - k)
      for k in range(len(LRS))]


def torch_rule(lrs, nesterov, momentum=MOMENTUM, l2=L2, wd=0.0):
  """NumPy (float64) torch.optim.SGD, dampening 0, on the loss above; weights after each step."""
  ws = [w.copy() for w in INIT]
  vs = [None] * len(ws)
  history = []
  for lr, xs in zip(lrs, XS):
    for i, (w, x) in enumerate(zip(ws, xs)):
      g = x + 2 * l2 * w + wd * w
      vs[i] = g.copy() if vs[i] is None else momentum * vs[i] + g
      ws[i] = w - lr * (g + momentum * vs[i] if nesterov else vs[i])
    history.append([w.copy() for w in ws])
  return history


def keras_run(make, lrs, l2=L2):
  """Runs `make(lr_callable)` on the loss above, with the LR read from a variable changed between
  steps; returns the weights after each step."""
  lr = tf.Variable(lrs[0], dtype=tf.float32, trainable=False)
  opt = make(lambda: lr.read_value())
  ws = [tf.Variable(w, dtype=tf.float32) for w in INIT]
  opt.build(ws)
  history = []
  for value, xs in zip(lrs, XS):
    lr.assign(value)
    with tf.GradientTape() as tape:
      loss = tf.add_n([tf.reduce_sum(w * x) + l2 * tf.reduce_sum(tf.square(w))
                       for w, x in zip(ws, xs)])
    opt.apply_gradients(zip(tape.gradient(loss, ws), ws))
    history.append([w.numpy().astype(np.float64) for w in ws])
  return history


def assert_weights_close(got, want, atol=1e-6, err_msg=""):
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=atol, rtol=0, err_msg=err_msg)


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_rule_across_lr_change(nesterov):
  got = keras_run(lambda lr: PyTorchSGD(lr, momentum=MOMENTUM, nesterov=nesterov), LRS)
  want = torch_rule(LRS, nesterov)
  for step, (g, w) in enumerate(zip(got, want)):
    assert_weights_close(g, w, err_msg=f"step {step + 1}")


@pytest.mark.parametrize("nesterov", [True, False])
def test_keras_sgd_agrees_at_constant_lr_and_differs_after_decay(nesterov):
  ours = keras_run(lambda lr: PyTorchSGD(lr, momentum=MOMENTUM, nesterov=nesterov), LRS)
  theirs = keras_run(lambda lr: keras.optimizers.SGD(lr, momentum=MOMENTUM, nesterov=nesterov),
                     LRS)
  # Keras' velocity is -lr * (PyTorch's) while lr is constant: steps 1 and 2 coincide.
  assert_weights_close(theirs[0], ours[0])
  assert_weights_close(theirs[1], ours[1])
  # After the decay Keras still carries the old lr inside its velocity.
  gap = max(np.abs(a - b).max() for a, b in zip(theirs[2], ours[2]))
  assert gap > 1e-2, gap
  assert_weights_close(ours[2], torch_rule(LRS, nesterov)[2])


def test_torch_weight_decay_is_added_to_gradient():
  lrs = (0.1,)
  got = keras_run(lambda lr: PyTorchSGD(lr, momentum=MOMENTUM, nesterov=True,
                                        torch_weight_decay=0.3), lrs, l2=0.0)
  assert_weights_close(got[0], torch_rule(lrs, True, l2=0.0, wd=0.3)[0])
  # ... and equals an L2 term of wd / 2 in the loss.
  assert_weights_close(got[0], torch_rule(lrs, True, l2=0.15)[0])


def test_plain_sgd_without_momentum():
  got = keras_run(lambda lr: PyTorchSGD(lr, momentum=0.0), LRS)
  assert_weights_close(got[-1], torch_rule(LRS, False, momentum=0.0)[-1])


def test_config_round_trip_and_serialize():
  opt = PyTorchSGD(0.05, momentum=0.8, nesterov=True, torch_weight_decay=5e-4, clipnorm=1.0,
                   name="sgd_t")
  config = opt.get_config()
  assert config["momentum"] == 0.8 and config["nesterov"] is True
  assert config["torch_weight_decay"] == 5e-4 and config["clipnorm"] == 1.0
  restored = PyTorchSGD.from_config(config)
  assert type(restored) is PyTorchSGD and restored.get_config() == config
  clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
  assert type(clone) is PyTorchSGD and clone.get_config() == config


def test_callable_learning_rate_is_evaluated_each_read():
  lr = tf.Variable(0.1)
  opt = PyTorchSGD(lambda: lr * 2.0)
  np.testing.assert_allclose(float(opt.learning_rate), 0.2, rtol=1e-6)
  lr.assign(0.5)
  np.testing.assert_allclose(float(opt.learning_rate), 1.0, rtol=1e-6)


def test_mirrored_strategy_matches_eager():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    step = tf.Variable(0, dtype=tf.int64, trainable=False,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    schedule = lambda s: tf.where(s < 2, LRS[0], LRS[2])  # noqa: E731
    opt = PyTorchSGD(lambda: schedule(step), momentum=MOMENTUM, nesterov=True)
    ws = [tf.Variable(w, dtype=tf.float32) for w in INIT]
    opt.build(ws)

  def replica_step(xs):
    with tf.GradientTape() as tape:
      loss = tf.add_n([tf.reduce_sum(w * x) + L2 * tf.reduce_sum(tf.square(w))
                       for w, x in zip(ws, xs)])
    opt.apply_gradients(zip(tape.gradient(loss, ws), ws))

  @tf.function
  def train_step(xs):
    strategy.run(replica_step, args=(xs,))
    step.assign_add(1)

  eager = keras_run(lambda lr: PyTorchSGD(lr, momentum=MOMENTUM, nesterov=True), LRS)
  for k, xs in enumerate(XS):
    train_step([tf.constant(x, tf.float32) for x in xs])
    assert_weights_close([w.numpy() for w in ws], eager[k], atol=1e-7)
  assert int(step.numpy()) == 3 and int(opt.iterations.numpy()) == 3


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_invalid_momentum(momentum):
  with pytest.raises(ValueError, match=repr(momentum)):
    PyTorchSGD(0.1, momentum=momentum)


def test_invalid_weight_decay():
  with pytest.raises(ValueError, match="-0.001"):
    PyTorchSGD(0.1, torch_weight_decay=-1e-3)


def test_make_optimizer():
  assert OPTIMIZERS == ("pytorch", "keras")
  opt = make_optimizer("pytorch", 0.1)
  assert isinstance(opt, PyTorchSGD) and opt.nesterov and opt.momentum == 0.9
  opt = make_optimizer("keras", 0.1, nesterov=False)
  assert type(opt) is keras.optimizers.SGD and not opt.nesterov and opt.momentum == 0.9
  with pytest.raises(ValueError, match="'adam'"):
    make_optimizer("adam", 0.1)


def test_matches_torch_optim_sgd():
  torch = pytest.importorskip("torch")
  for nesterov in (True, False):
    ws = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in INIT]
    opt = torch.optim.SGD(ws, lr=LRS[0], momentum=MOMENTUM, nesterov=nesterov)
    for lr, xs in zip(LRS, XS):
      for group in opt.param_groups:
        group["lr"] = lr
      opt.zero_grad()
      loss = sum((w * torch.tensor(x)).sum() + L2 * (w ** 2).sum() for w, x in zip(ws, xs))
      loss.backward()
      opt.step()
    got = keras_run(lambda lr, n=nesterov: PyTorchSGD(lr, momentum=MOMENTUM, nesterov=n), LRS)
    assert_weights_close(got[-1], [w.detach().numpy() for w in ws])

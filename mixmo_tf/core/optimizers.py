"""PyTorch-style SGD for Keras 3, the optimiser of the official MixMo runs (docs/method.md §7).

Keras' SGD folds the learning rate into the velocity (m <- mu m - lr g), whereas PyTorch's SGD,
used by the official MixMo code, accumulates raw gradients (v <- mu v + g) and multiplies by the
current learning rate only when stepping. The two agree while the learning rate is constant but
differ at every warmup step and after each decay, so `PyTorchSGD` reproduces PyTorch's rule.
"""

from __future__ import annotations

import keras
from keras import ops

OPTIMIZERS = ("pytorch", "keras")  # Names accepted by `make_optimizer` (the --optimizer flag).


@keras.saving.register_keras_serializable(package="mixmo_tf")
class PyTorchSGD(keras.optimizers.Optimizer):
  """SGD with momentum following `torch.optim.SGD` (dampening 0), in backend-agnostic `keras.ops`.

  Per variable theta with gradient g and current learning rate lr:
    g <- g + torch_weight_decay * theta      (coupled L2, added before momentum as in PyTorch)
    v <- momentum * v + g                    (v starts at 0, so the first step gives v = g)
    theta <- theta - lr * v                  (plain momentum)
    theta <- theta - lr * (g + momentum * v) (nesterov=True)

  Args:
    learning_rate: float, `LearningRateSchedule` (called with the optimizer's iterations), or a
      zero-argument callable returning the current rate (e.g. `lambda: schedule(step)`).
    momentum: momentum factor mu in [0, 1).
    nesterov: whether to use PyTorch's Nesterov step.
    torch_weight_decay: PyTorch's `weight_decay`: wd * theta is added to the gradient before the
      momentum update (coupled L2). Not Keras' `weight_decay`, which is decoupled; that one may
      still be passed through `**kwargs`, but the MixMo recipe does not use it.
    name: optimizer name.
    **kwargs: other `keras.optimizers.Optimizer` arguments (clipnorm, use_ema, ...).
  """

  def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, torch_weight_decay=0.0,
               name="pytorch_sgd", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
        or not 0.0 <= momentum < 1.0:
      raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}.")
    if isinstance(torch_weight_decay, bool) or not isinstance(torch_weight_decay, (int, float)) \
        or not torch_weight_decay >= 0.0:
      raise ValueError(f"torch_weight_decay must be a float >= 0, got {torch_weight_decay!r}.")
    self.momentum = float(momentum)
    self.nesterov = bool(nesterov)
    self.torch_weight_decay = float(torch_weight_decay)

  def build(self, variables):
    """Creates one zero-initialised momentum buffer per trainable variable (none if mu = 0)."""
    if self.built:
      return
    super().build(variables)
    self.momentums = []
    if self.momentum != 0.0:
      self.momentums = self.add_optimizer_variables(variables, "momentum")

  def update_step(self, gradient, variable, learning_rate):
    """Applies the PyTorch SGD rule to one variable; `learning_rate` is the current rate."""
    learning_rate = ops.cast(learning_rate, variable.dtype)
    gradient = ops.cast(gradient, variable.dtype)
    if self.torch_weight_decay != 0.0:
      gradient = ops.add(gradient,
                         ops.multiply(ops.cast(self.torch_weight_decay, variable.dtype), variable))
    if self.momentum == 0.0:
      self.assign_sub(variable, ops.multiply(learning_rate, gradient))
      return
    momentum = ops.cast(self.momentum, variable.dtype)
    velocity = self.momentums[self._get_variable_index(variable)]
    self.assign(velocity, ops.add(ops.multiply(momentum, velocity), gradient))
    if self.nesterov:
      step = ops.add(gradient, ops.multiply(momentum, velocity))
    else:
      step = velocity
    self.assign_sub(variable, ops.multiply(learning_rate, step))

  def get_config(self):
    """Base config plus momentum, nesterov and torch_weight_decay, for `from_config`."""
    config = super().get_config()
    config.update({
        "momentum": self.momentum,
        "nesterov": self.nesterov,
        "torch_weight_decay": self.torch_weight_decay,
    })
    return config


def make_optimizer(kind: str, learning_rate, momentum=0.9, nesterov=True):
  """SGD of the given kind: "pytorch" (`PyTorchSGD`, official MixMo rule) or "keras" (Keras SGD).

  `learning_rate` may be a float, a schedule, or a zero-argument callable, as for either class.
  """
  if kind == "pytorch":
    return PyTorchSGD(learning_rate, momentum=momentum, nesterov=nesterov)
  if kind == "keras":
    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
  raise ValueError(f"optimizer kind {kind!r} is not valid; expected one of {OPTIMIZERS}.")

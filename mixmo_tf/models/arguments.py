"""Validation of the hand-built networks' arguments, shared by their classes and `Config.validate`."""

from __future__ import annotations

from typing import List, Tuple


def model_argument_errors(model: str, depth: int, width: int,
                          num_members: int) -> List[Tuple[str, object, str]]:
  """(argument, received value, what is expected) for every invalid network argument of a
  hand-built network (`model` is a name of `mixmo_tf.models.MODELS`)."""
  errors = []
  if model == "wide_resnet" and (depth < 10 or (depth - 4) % 6):
    errors.append(("depth", depth, "6n + 4 with n >= 1 for WRN (10, 16, 22, 28, ...)"))
  if width < 1:
    errors.append(("width", width, "an integer >= 1"))
  if num_members < 1:
    errors.append(("num_members", num_members, "an integer >= 1"))
  return errors


def check_model_arguments(model: str, depth: int = 28, width: int = 1, num_members: int = 1,
                          prefix: str = "") -> None:
  """Raises ValueError naming the first invalid argument (as `prefix + name=value`)."""
  errors = model_argument_errors(model, depth, width, num_members)
  if errors:
    name, value, expected = errors[0]
    raise ValueError(f"{prefix}{name}={value!r} is not valid; expected {expected}.")

"""The LiteRT artifact (TensorFlow's TFLiteConverter): the serving function as a .tflite flatbuffer.

Converted from the serving SavedModel's `serving_default` concrete function, loaded back, with
builtin ops only (`TFLITE_BUILTINS`: no Flex / select TF ops, so the plain LiteRT runtime runs it;
the shape asserts are dropped). Its signature `serving_default` takes `images` uint8
[N, H, W, 3] (stored as [1, H, W, 3] with batch -1 in the signature: the signature runner resizes
it to the batch fed) and returns `probs` and `member_probs`.

Why the SavedModel round trip: converting the live tf.function keeps the Keras variables as
VAR_HANDLE / READ_VARIABLE ops, which LiteRT reads as never-initialised (all outputs NaN, or
"variable != nullptr" failures); the loaded SavedModel's function gets its variables frozen into
constants, batch norm folded into the convolutions and the heads' einsum as FULLY_CONNECTED.
"""

from __future__ import annotations

import tensorflow as tf

from mixmo_tf.deploy.formats import INPUT, OUTPUTS, importable


def convert(saved_model_dir: str) -> bytes:
  """The .tflite flatbuffer of the SavedModel's `serving_default`, builtin ops only; ValueError
  with the converter's first lines if an op has no builtin LiteRT kernel."""
  loaded = tf.saved_model.load(saved_model_dir)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [loaded.signatures["serving_default"]], loaded)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  try:
    return converter.convert()
  except Exception as e:  # pylint: disable=broad-except  (any converter failure: one line)
    raise ValueError(f"LiteRT conversion with builtin ops only failed: {type(e).__name__}: "
                     f"{' '.join(str(e).split())[:300]}") from None


def interpreter(model: bytes, num_threads: int = 2):
  """A LiteRT interpreter of the flatbuffer `model`: ai-edge-litert's where installed, else
  TensorFlow's (the same runtime, bundled and deprecated in TensorFlow)."""
  if importable("ai_edge_litert"):
    from ai_edge_litert.interpreter import Interpreter
  else:
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  return Interpreter(model_content=model, num_threads=num_threads)


def run(model: bytes, images, num_threads: int = 2):
  """{'probs', 'member_probs'} of uint8 `images` through the signature runner (resized to N)."""
  runner = interpreter(model, num_threads).get_signature_runner("serving_default")
  outputs = runner(**{INPUT: images})
  return {name: outputs[name] for name in OUTPUTS}

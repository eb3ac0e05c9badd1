"""The ONNX artifact (TensorFlow + tf2onnx): the serving function as an ONNX graph.

tf2onnx translates `tf_serving.ServingModule.serve` itself (its uint8 input signature, variables
frozen, asserts dropped): input `images` uint8 [N, H, W, 3] with a symbolic batch dimension `N`,
outputs `probs` [N, K] and `member_probs` [N, M, K]. Opset 17 (ONNX Runtime >= 1.13).
"""

from __future__ import annotations

import logging

from mixmo_tf.deploy.formats import INPUT, OUTPUTS

OPSET = 17
BATCH = "N"


def convert(module, opset: int = OPSET) -> bytes:
  """The serialized ONNX model of `module.serve` (a `tf_serving.ServingModule`); ValueError with
  the converter's first line if tf2onnx cannot translate an op."""
  import tf2onnx  # Optional (the `export` extra); `mixmo_tf.export` checks it is importable.
  logging.getLogger("tf2onnx").setLevel(logging.ERROR)
  try:
    proto, _ = tf2onnx.convert.from_function(module.serve, module.serve.input_signature,
                                             opset=opset)
  except Exception as e:  # pylint: disable=broad-except  (any converter failure: one line)
    raise ValueError(f"ONNX conversion failed (tf2onnx, opset {opset}): {type(e).__name__}: "
                     f"{' '.join(str(e).split())[:300]}") from None
  names = ([i.name for i in proto.graph.input], sorted(o.name for o in proto.graph.output))
  if names != ([INPUT], sorted(OUTPUTS)):
    raise ValueError(f"ONNX conversion gave inputs {names[0]} and outputs {names[1]}, expected "
                     f"[{INPUT!r}] and {sorted(OUTPUTS)}.")
  name_batch_dimension(proto)
  return proto.SerializeToString()


def name_batch_dimension(proto) -> None:
  """Names the symbolic batch dimension of the graph's input and outputs `N` (tf2onnx calls each
  one `unk__<n>`), so that clients read [N, H, W, 3] -> [N, K], [N, M, K]."""
  values = list(proto.graph.input) + list(proto.graph.output)
  symbols = {v.type.tensor_type.shape.dim[0].dim_param for v in values}
  symbols.discard("")
  for value in values + list(proto.graph.value_info):
    dims = value.type.tensor_type.shape.dim
    for dim in dims:
      if dim.dim_param in symbols:
        dim.dim_param = BATCH


def run(model, images, num_threads: int = 0):
  """{'probs', 'member_probs'} of uint8 `images` in ONNX Runtime (the model's bytes or path)."""
  import onnxruntime
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = num_threads
  session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
  return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {INPUT: images})))

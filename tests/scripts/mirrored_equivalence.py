"""One SGD step under MirroredStrategy on 2 logical CPUs equals the single-device step.

Run as a script (logical devices must be configured before TensorFlow initialises). The global
batch is [A, A]: replica r gets A, the single device gets [A, A]. Batch-norm statistics of [A, A]
equal those of A, so the only thing that can differ is how the loss is scaled across replicas
(compute_average_loss over the global batch, L2 divided by the replica count, gradients summed).
Prints the max absolute weight difference.
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from mixmo_tf import sample_masks  # noqa: E402
from mixmo_tf import step as step_lib  # noqa: E402
from mixmo_tf.train import build_trainer  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

half = 8
kw = dict(batch_size=2 * half, batch_repetitions=1, l2=3e-4, lr_warmup_epochs=0.0,
          base_learning_rate=1.0)


def trainer(strategy):
  return build_trainer(tiny_config(tempfile.mkdtemp(), **kw), strategy)


def step_fn(t):
  return tf.function(lambda *args: step_lib.apply_step(t.model, t.optimizer, t.spec, *args))


mirrored = trainer(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
assert mirrored.strategy.num_replicas_in_sync == 2 and single.strategy.num_replicas_in_sync == 1
for a, b in zip(mirrored.model.weights, single.model.weights):
  np.testing.assert_array_equal(a.numpy(), b.numpy())

rng = np.random.default_rng(0)
inputs = [tf.constant(rng.normal(size=(half, 8, 8, 3)), tf.float32) for _ in range(2)]
masks, kappa = sample_masks(half, 8, 8, 2, "cutmix", patch_probability=1.0, seed=4)
targets = tf.one_hot(rng.integers(0, 10, (half, 2)), 10)
args_half = (inputs, targets, masks, kappa)
args_full = tf.nest.map_structure(lambda t: tf.concat([t, t], 0), args_half)

distributed = mirrored.strategy.experimental_distribute_values_from_function(lambda ctx: args_half)
mirrored.strategy.run(step_fn(mirrored), args=distributed)
single.strategy.run(step_fn(single), args=args_full)
diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
           for a, b in zip(mirrored.model.trainable_weights, single.model.trainable_weights))
fresh = trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
moved = max(float(np.max(np.abs(a.numpy() - b.numpy())))
            for a, b in zip(mirrored.model.trainable_weights, fresh.model.trainable_weights))
print(f"MAXDIFF {diff:.3e} MOVED {moved:.3e}")

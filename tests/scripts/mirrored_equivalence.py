"""One SGD step under MirroredStrategy on 2 logical CPUs equals the single-device step.

Run as a script (logical devices must be configured before TensorFlow initialises). The global
batch is [A, B] with different halves: replica 0 gets A, replica 1 gets B, the single device gets
concat(A, B). With synchronized BatchNorm (docs/method.md §12.11, §18 item 2) the batch statistics
are those of the global batch on both sides, so weights and moving statistics must agree; loss
scaling across replicas (compute_average_loss over the global batch, L2 divided by the replica
count, gradients summed) must agree too.

Prints `MAXDIFF <w> MOVED <m> BNDIFF <b> REPLICA_BN_DIFF <r>`: max |weight difference| after the
step, how far the step moved the weights, max |moving-statistic difference| between replica 0 /
replica 1 and the single device, and between the two replicas. `--unsynchronized` turns
synchronized BatchNorm off (per-replica statistics) to show that BNDIFF then grows.
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
from mixmo_tf.core import seeds  # noqa: E402
from mixmo_tf.data import datasets  # noqa: E402
from mixmo_tf.models.layers import FusedBatchNorm, set_batch_norm_sync  # noqa: E402
from mixmo_tf.run_folder import RunFolder  # noqa: E402
from mixmo_tf.training import engines  # noqa: E402
from mixmo_tf.training.tf_engine import TFDistributeEngine, apply_step  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

SYNCHRONIZED = "--unsynchronized" not in sys.argv[1:]
half = 8
kw = dict(batch_size=2 * half, batch_repetitions=1, l2=3e-4, lr_warmup_epochs=0.0,
          base_learning_rate=1.0, sync_batch_norm=SYNCHRONIZED)


def trainer(strategy):
  """The tf.distribute engine of a tiny run under `strategy`, its weights seeded alike."""
  config = engines.resolve(tiny_config(tempfile.mkdtemp(), **kw).validate(), "tensorflow")
  config.validate(strategy.num_replicas_in_sync)
  seeds.initialise(config.seed)
  info = datasets.load(config).info
  t = TFDistributeEngine(config, info, strategy, RunFolder(config.output_dir))
  assert set_batch_norm_sync(t.network, SYNCHRONIZED) > 0
  return t


def step_fn(t):
  return tf.function(lambda *args: apply_step(t.network, t.optimizer, t.spec, *args))


def moving_statistics(t):
  """Per replica, the moving mean and variance of every FusedBatchNorm: [replica][variable]."""
  variables = [v for layer in t.network.layers if isinstance(layer, FusedBatchNorm)
               for v in (layer.moving_mean, layer.moving_variance)]
  per_variable = [t.strategy.experimental_local_results(v.value) for v in variables]
  return [[values[r].numpy() for values in per_variable]
          for r in range(t.strategy.num_replicas_in_sync)]


def max_abs_diff(xs, ys):
  assert len(xs) == len(ys) > 0
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(xs, ys))


mirrored = trainer(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
assert mirrored.strategy.num_replicas_in_sync == 2 and single.strategy.num_replicas_in_sync == 1
for a, b in zip(mirrored.network.weights, single.network.weights):
  np.testing.assert_array_equal(a.numpy(), b.numpy())

# Halves with different distributions, so per-replica statistics would visibly differ.
rng = np.random.default_rng(0)
images = rng.normal(size=(2, 2 * half, 8, 8, 3))
images[:, half:] = 0.5 + 2.0 * images[:, half:]
inputs = [tf.constant(x, tf.float32) for x in images]
masks, kappa = sample_masks(2 * half, 8, 8, 2, "cutmix", patch_probability=1.0, seed=4)
targets = tf.one_hot(rng.integers(0, 10, (2 * half, 2)), 10)
args_full = (inputs, targets, masks, kappa)


def replica_args(ctx):
  start = ctx.replica_id_in_sync_group * half
  return tf.nest.map_structure(lambda t: t[start:start + half], args_full)


distributed = mirrored.strategy.experimental_distribute_values_from_function(replica_args)
mirrored.strategy.run(step_fn(mirrored), args=distributed)
single.strategy.run(step_fn(single), args=args_full)
diff = max_abs_diff(mirrored.network.trainable_weights, single.network.trainable_weights)
fresh = trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
moved = max_abs_diff(mirrored.network.trainable_weights, fresh.network.trainable_weights)
replica_stats, (single_stats,) = moving_statistics(mirrored), moving_statistics(single)
bn_diff = max(max_abs_diff(stats, single_stats) for stats in replica_stats)
replica_bn_diff = max_abs_diff(replica_stats[0], replica_stats[1])
print(f"MAXDIFF {diff:.3e} MOVED {moved:.3e} BNDIFF {bn_diff:.3e} "
      f"REPLICA_BN_DIFF {replica_bn_diff:.3e} SYNCHRONIZED {SYNCHRONIZED}")

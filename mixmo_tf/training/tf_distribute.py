"""tf.distribute strategy creation: only the driver chooses one (docs/method.md §12.11)."""

from __future__ import annotations

import tensorflow as tf


def create_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
  """The strategy named by --strategy: mirrored (visible devices), multi_worker (TF_CONFIG), tpu."""
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"--strategy={name!r} is not valid; expected mirrored, multi_worker or tpu.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one worker that writes the run folder (the only one outside multi-worker)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (resolver.task_type == "worker" and
                                           resolver.task_id == 0 and
                                           "chief" not in resolver.cluster_spec().as_dict())


def worker_id(strategy: tf.distribute.Strategy) -> int:
  resolver = getattr(strategy, "cluster_resolver", None)
  return int(resolver.task_id) if resolver is not None and resolver.task_type else 0

"""mixmo_tf: MixMo (Ramé, Sun, Cord, ICCV 2021) multi-input multi-output ensembles in Keras 3 / TF.

Layout: `core` (the method, keras.ops), `models`, `data`, `run_folder`, `training` (the run loop
and its two engines), `evaluation`, `deploy`; the commands `train`, `evaluate`, `tables`,
`export`. Modules that need TensorFlow are named `tf*` (`tf_engine`, `tfds`, ...); every other
module runs on any Keras backend without TensorFlow.

Importing mixmo_tf first sets TensorFlow's environment defaults (oneDNN on, C++ INFO lines off)
before TensorFlow loads; see `mixmo_tf.runtime`. Import it before tensorflow or keras.
"""

from mixmo_tf import runtime as _runtime

__version__ = "0.1.0"

_runtime.configure_tensorflow_env()  # Before anything imports TensorFlow.

with _runtime.quiet_tensorflow_import():
  from mixmo_tf.core.losses import mixmo_loss, mixmo_weights, soft_cross_entropy
  from mixmo_tf.core.mixing import MixingLayer, mixing_methods, sample_kappa, sample_masks
  from mixmo_tf.models import (BackboneMixMo, DenseMultihead, MixMoModel, PreActResNet18,
                               WideResNet, build_model, from_backbone)
  from mixmo_tf.training.trainer import MixMoTrainer, train_arrays_dataset, trainer_from_config

if _runtime.onednn_setting_came_too_late():
  _runtime.log_environment_once()  # A warning now, in library use too; CLIs log it anyway.

__all__ = ["BackboneMixMo", "from_backbone", "DenseMultihead", "MixMoModel", "MixMoTrainer", "MixingLayer", "PreActResNet18",
           "WideResNet", "build_model", "mixing_methods", "mixmo_loss", "mixmo_weights",
           "sample_kappa", "sample_masks", "soft_cross_entropy", "train_arrays_dataset",
           "trainer_from_config", "__version__"]

"""mixmo_tf: MixMo (Ramé, Sun, Cord, ICCV 2021) multi-input multi-output ensembles in Keras 3 / TF.

Importing mixmo_tf first sets TensorFlow's environment defaults (oneDNN on, C++ INFO lines off)
before TensorFlow loads; see `mixmo_tf.runtime`. Import it before tensorflow or keras.
"""

from mixmo_tf import runtime as _runtime

__version__ = "0.1.0"

_runtime.configure_tensorflow_env()  # Before anything imports TensorFlow.

with _runtime.quiet_tensorflow_import():
  from mixmo_tf.losses import mixmo_loss, mixmo_weights, soft_cross_entropy
  from mixmo_tf.mixing import MixingLayer, mixing_methods, sample_kappa, sample_masks
  from mixmo_tf.models import DenseMultihead, MixMoModel, PreActResNet18, WideResNet, build_model
  from mixmo_tf.keras_trainer import MixMoTrainer, train_arrays_dataset, trainer_from_config

if _runtime.onednn_setting_came_too_late():
  _runtime.log_environment_once()  # A warning now, in library use too; CLIs log it anyway.

__all__ = ["DenseMultihead", "MixMoModel", "MixMoTrainer", "MixingLayer", "PreActResNet18",
           "WideResNet", "build_model", "train_arrays_dataset", "trainer_from_config", "mixing_methods", "mixmo_loss", "mixmo_weights", "sample_kappa",
           "sample_masks", "soft_cross_entropy", "__version__"]

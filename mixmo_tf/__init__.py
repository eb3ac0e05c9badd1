"""mixmo_tf: MixMo (Ramé, Sun, Cord, ICCV 2021) multi-input multi-output ensembles in Keras 3 / TF."""

from mixmo_tf.losses import mixmo_loss, mixmo_weights, soft_cross_entropy
from mixmo_tf.mixing import MixingLayer, mixing_methods, sample_kappa, sample_masks
from mixmo_tf.models import DenseMultihead, MixMoModel, PreActResNet18, WideResNet, build_model

__version__ = "0.1.0"

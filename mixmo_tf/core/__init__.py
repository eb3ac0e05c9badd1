"""The method (docs/method.md §3-§9) in `keras.ops`, no I/O: seeds and random streams, mask sampling
and the mixing layer, pixel MSDA, per-copy augmentation, the loss, schedules, the SGD rule and one
replica's step. Runs on every Keras backend; `tf_augmix` (AugMix, built on tf.image) is the one
TensorFlow-only module, named so."""

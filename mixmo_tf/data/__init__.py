"""Data: DataInfo, image files, the datasets of a run as NumPy examples (any backend), the training
batches of every epoch, OOD and corrupted sets. TensorFlow serves two modules, named so:
`tf_images` (the tf.io decoding fast path) and `tfds` (TensorFlow Datasets)."""

"""The data layer's own error, importable without TensorFlow."""


class DatasetUnavailableError(ValueError):
  """A TFDS dataset is not prepared under the data_dir and could not be downloaded there."""

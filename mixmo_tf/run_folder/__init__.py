"""The run folder: the one place that knows its layout (`folder.RunFolder`), its lock, atomic
writes, and the checkpoints of both engines behind one interface (`checkpoints`). The tf.train
checkpoint format is the one TensorFlow module here (`tf_checkpoints`)."""

from mixmo_tf.run_folder.folder import RunFolder
from mixmo_tf.run_folder.lock import RunFolderError

__all__ = ["RunFolder", "RunFolderError"]

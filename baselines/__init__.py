"""Baselines that combine several runs of the one driver (`python -m mixmo_tf.train`)."""

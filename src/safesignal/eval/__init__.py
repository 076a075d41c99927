"""Evaluation: the models × policies × attacks grid (`safesignal eval`), its scoring and the
streaming-detection benchmark."""

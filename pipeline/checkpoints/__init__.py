"""Checkpoints: reading files safely and telling their formats apart, our own format, the original's release
layouts, the registry of released models (zoo.yaml) and downloads."""

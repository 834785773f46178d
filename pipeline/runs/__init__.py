"""Runs: folder names and layout, the record of who started a run, and the lock that keeps one process per run."""

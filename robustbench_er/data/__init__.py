"""Datasets: the built-in specs and loaders and the folder readers."""

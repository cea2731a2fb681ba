"""vitplas.experiments."""

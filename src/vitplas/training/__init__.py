"""vitplas.training."""

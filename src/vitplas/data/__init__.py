"""vitplas.data."""

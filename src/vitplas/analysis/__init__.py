"""vitplas.analysis."""

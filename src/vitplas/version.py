"""The version of vitplas, in a module of its own: what records it (run manifests) needs no
other part of the package."""

__version__ = "0.1.0"

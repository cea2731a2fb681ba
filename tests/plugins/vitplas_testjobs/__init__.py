"""Test-only vitplas jobs, registered through the `vitplas.jobs` entry point group of the
distribution beside this package (vitplas_testjobs-0.1.dist-info): tests/conftest.py puts this
folder on sys.path and PYTHONPATH, so the tests' sweep launchers and workers find them."""

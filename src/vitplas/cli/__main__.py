"""`python -m vitplas.cli ...` is `vitplas ...`."""

from vitplas.cli import main

main()

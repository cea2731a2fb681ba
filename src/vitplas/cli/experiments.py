"""Commands of the experiments area (registered on vitplas.cli.app.app)."""

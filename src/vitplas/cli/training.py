"""Commands of the training area (registered on vitplas.cli.app.app)."""

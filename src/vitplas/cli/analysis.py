"""Commands of the analysis area (registered on vitplas.cli.app.app)."""

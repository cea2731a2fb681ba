"""Commands of the catalog area (registered on vitplas.cli.app.app)."""

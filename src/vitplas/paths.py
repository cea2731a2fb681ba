"""Where vitplas keeps files outside run folders: weights, offline assets, datasets.

vitplas_home()   $VITPLAS_HOME, else ~/.cache/vitplas (scripts/offline-assets writes there
                 too, so this stays a plain path rather than the platform's cache folder)
weights_dir()    <home>/weights: converted checkpoints, a preset's hand-placed file
data_home(root)  `root`, else $VITPLAS_DATA, else <home>/data
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "VITPLAS_HOME"
DATA_ENV = "VITPLAS_DATA"


def vitplas_home() -> Path:
    """Cache root for weights and offline assets: $VITPLAS_HOME or ~/.cache/vitplas."""
    return Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "vitplas"))


def weights_dir() -> Path:
    """Where converted and hand-placed weights files live."""
    return vitplas_home() / "weights"


def data_home(root: str | Path | None = None) -> Path:
    """The data root: explicit `root` > $VITPLAS_DATA > vitplas_home()/'data'."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return vitplas_home() / "data"

"""Where data, embedding caches and results live.

Everything generated goes under one home folder, ``$QPMLIB_HOME`` or ``<repo>/.qpm`` by default:

* ``data/``: datasets (SynthBirds is generated here; real datasets are downloaded or linked here).
  ``$QPMLIB_DATA`` overrides it, e.g. to point at an existing ``CUB_200_2011`` download.
* ``cache/``: embedding stores (one per dataset, split, backbone, weights and preprocessing).
* ``results/<profile>/``: the results store; a ``smoke`` run never touches ``demo`` or ``paper`` results.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """Root of everything generated (``$QPMLIB_HOME`` or ``<repo>/.qpm``)."""
    return Path(os.environ.get("QPMLIB_HOME", REPO_ROOT / ".qpm"))


def data_dir() -> Path:
    """Folder that holds datasets (``$QPMLIB_DATA`` or ``home()/data``)."""
    return Path(os.environ.get("QPMLIB_DATA", home() / "data"))


def cache_dir() -> Path:
    """Folder that holds embedding stores."""
    return home() / "cache"


def results_dir(profile: str) -> Path:
    """Folder that holds the results store of one profile."""
    return home() / "results" / profile

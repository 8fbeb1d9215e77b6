"""Shared test settings: never touch the network, never write into the user's results."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    """Run the files that hold Slurm tests first: they wait on jobs and take longest, so under pytest-xdist
    (``make test``, with ``--no-loadscope-reorder``) they start at once instead of ending alone after the rest."""
    slurm_files = {item.path for item in items if item.get_closest_marker("slurm")}
    items.sort(key=lambda item: item.path not in slurm_files)  # stable: every other order is kept

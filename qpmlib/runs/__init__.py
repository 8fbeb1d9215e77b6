"""Runs: computing (or loading) the stored results of every method, and evaluating trained models.

Modules, bottom-up:

* :mod:`~qpmlib.runs.provenance`: git commit, device and versions, one helper each.
* :mod:`~qpmlib.runs.checks`: ``check_profile``, every profile field checked before any work.
* :mod:`~qpmlib.runs.run`: ``Run``, the one run type of every method (stored stages, metrics, model).
* :mod:`~qpmlib.runs.evaluate`: the metrics every stage stores; "model on test image i".
* :mod:`~qpmlib.runs.dino_qpm`: the dense, QP and fine-tune stages (``run_dino_qpm``, ``run_seeds``).
* :mod:`~qpmlib.runs.baselines`: the DINO-SLDD and DINO-QSENN stages.
* :mod:`~qpmlib.runs.methods`: the methods of Table 1 as a registry (``METHODS``, ``run_methods``, ``run_method``).
* :mod:`~qpmlib.runs.executor`: tasks with store keys, computed in-process or as Slurm jobs (``compute``, ``plan``).
* :mod:`~qpmlib.runs.archive`: export and import of finished entries (one checksummed tar).
* :mod:`~qpmlib.runs.tasks`: the book's runs as executor tasks (``compute_requests``, ``plan_requests``,
  ``export_runs``, ``import_runs``).

Results live in the content-addressed store of :mod:`qpmlib.results`.
"""

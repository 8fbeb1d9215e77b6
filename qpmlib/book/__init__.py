"""The book: what the chapters call to start and to display, and the runner that executes and builds them.

* :mod:`~qpmlib.book.chapter`: ``start`` (provenance line, stand-in or random-weights banner), ``standin_summary`` and ``glue``.
* :mod:`~qpmlib.book.views`: interactive widgets and the displays several chapters share.
* :mod:`~qpmlib.book.runner`: papermill in ``_toc.yml`` order, then the Jupyter Book build
  (``python -m qpmlib.book.runner run|build|all --profile demo``).
* :mod:`~qpmlib.book.kernel`: the kernel client the runner gives papermill (its waits never miss a queued reply).
* :mod:`~qpmlib.book.store`: every run the book needs, computed without the chapters (locally or as Slurm jobs),
  packed into one archive and installed from one (``make runs``, ``make export``, ``make import``).
"""

"""qpmlib: the library behind the DINO-QPM reproducibility book.

Modules follow the pipeline and import only from earlier stages. The names chapters use:

* ``profiles``: ``get_profile`` (smoke / demo / paper), ``PROFILES``; ``paths``: data, cache and results folders.
* ``data``: ``prepare``, ``read_index``; ``data.synthbirds`` (``generate``, ``part_maps``, ``part_names``,
  ``class_attributes``, ``sample_grid``); ``data.cub`` (``patch_mask(s)``, ``download_cub``); ``data.cars``;
  ``data.images`` (``load_image``, the reference preprocessing).
* ``backbones``: ``build_backbone``, ``BACKBONES``, ``pretrained_available``, ``standin_names``, ``read_card``.
* ``pretrain``: the stand-in backbones' pretraining (``corpus``, ``ssl``, ``trainer``) and what the stand-in chapter
  shows (``probe``, ``showcase``).
* ``embeddings``: ``get_store``, ``extract``, ``EmbeddingStore`` (fingerprinted, memory-mapped token cache).
* ``model``, ``losses``, ``train``: the adapter, the feature-diversity and L1 losses, the training stages.
* ``qp``: ``qpm_matrices``, ``qpm_objective``, ``r_threshold``, ``solve_qpm`` (the QPM feature selection).
* ``glm``, ``sparse_baselines``, ``baselines``: DINO-SLDD, DINO-QSENN and the linear probe.
* ``results``: the content-addressed results store; ``pipeline``: ``run_dino_qpm``, ``load_run``, ``summarise``.
* ``metrics``: ``accuracy``, ``plausibility``, ``sid_at_k``, ``class_independence``, ``contrastiveness``,
  ``patch_contextualisation``, ``compactness``, ``part_alignment``.
* ``explain``: local explanations, CAM, class-pair comparisons, top patches, failure categories.
* ``paper``: the paper's reported numbers; ``tables`` and ``plots``: tables beside the paper and figures.
* ``chapter``: ``start`` (provenance line and the stand-in or random-weights banner), ``standin_summary``;
  ``walkthrough``: introduction figures.
* ``bookrunner``: papermill in ``_toc.yml`` order, then the Jupyter Book build (``python -m qpmlib.bookrunner``).
"""

__version__ = "0.1.0"

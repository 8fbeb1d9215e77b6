"""qpmlib: the library behind the DINO-QPM reproducibility book.

The house reads top-down; a module imports only from its own layer or the layers above it in this list
(``tests/test_layers.py`` checks every import):

1. config: :mod:`qpmlib.config` (profiles, overrides), :mod:`qpmlib.paths`, :mod:`qpmlib.paper` (the paper's
   numbers and claims, as data), :mod:`qpmlib.files` (locks between processes, atomic writes, checksums),
   :mod:`qpmlib.meter` (time and peak memory of a stage).
2. data and features: :mod:`qpmlib.data` (dataset registry, SynthBirds, CUB, Cars, images),
   :mod:`qpmlib.backbones`, :mod:`qpmlib.embeddings`.
3. core: :mod:`qpmlib.model`, :mod:`qpmlib.losses`, :mod:`qpmlib.qp`, :mod:`qpmlib.train`, :mod:`qpmlib.glm`,
   :mod:`qpmlib.sparse` (SLDD / Q-SENN), :mod:`qpmlib.metrics`, :mod:`qpmlib.heads` (prototype and cluster heads:
   ProtoS-ViT, ProtoFM, KLC; named features), :mod:`qpmlib.pretrain` (the stand-in backbones' pretraining:
   corpus, DINO / iBOT losses, trainer, probes).
4. runs: :mod:`qpmlib.results` (the store) and :mod:`qpmlib.runs` (checks, the run type, the stages, the
   methods of Table 1, evaluation, provenance; the local / Slurm executor and the archive export and import).
5. analysis: :mod:`qpmlib.analysis` (summaries, claims, Tables 1-4, sweeps, pairs, failures, the report, the
   stand-in backbone's tables).
6. figures: :mod:`qpmlib.figures` (every figure builder).
7. book: :mod:`qpmlib.book` (chapter start and glue, views, the papermill runner).

:data:`CHAPTER_API` lists, module by module, every name the chapters use (``tests/test_chapter_api.py`` keeps it
complete): a chapter is a parameters cell, calls of these names and prose.
"""

__version__ = "0.1.0"

#: The names the chapters use, by module.
CHAPTER_API: dict[str, tuple[str, ...]] = {
    "qpmlib.book.chapter": ("start", "glue", "provenance", "standin_summary"),
    "qpmlib.book.views": ("figure_widget", "show_pair", "show_class_pairs", "pair_widget", "show_failure_category",
                          "failure_widget",
                          "beside_paper_view", "beside_bars_widget",
                          "figure_switch", "pair_switch", "failure_switch", "beside_bars_switch", "gallery_indices"),
    "qpmlib.book.runner": ("build_dir",),
    "qpmlib.paper": ("TABLE3_SETTINGS", "TABLE4_BACKBONES", "claim", "method_display", "metric_display"),
    "qpmlib.data": ("class_names", "prepare", "read_index"),
    "qpmlib.data.synthbirds": ("sample_grid",),
    "qpmlib.data.images": ("load_image",),
    "qpmlib.backbones": ("build_backbone", "pretrained_available"),
    "qpmlib.embeddings": ("get_store",),
    "qpmlib.model": ("build_model", "join_tokens"),
    "qpmlib.metrics": ("patch_contextualisation",),
    "qpmlib.runs.methods": ("METHOD_KEYS", "compact_sizes", "run_method", "sid_k"),
    "qpmlib.analysis.summary": ("beside_paper", "beside_value", "format_mean_std", "gather_beside_paper",
                                "method_gap", "paper_dataset_map", "paper_table", "reproduction_verdict",
                                "styled", "summarise", "table_rows", "wide_table",
                                "headline_table"),
    "qpmlib.analysis.claims": ("agreeing", "judge", "judged", "verdict_table"),
    "qpmlib.analysis.tables": ("OPEN_SOLVER_CHECK", "backbone_cosines", "our_radar", "paper_radar", "qp_overview",
                               "qp_setting_label", "radar_areas", "reproduced_tables", "solver_comparison",
                               "table1_records", "table3_backbones", "table3_records", "table4_records"),
    "qpmlib.analysis.sweeps": ("SOURCE_LABELS", "SWEEPS", "defined_metrics", "figure_sweep", "means_table",
                               "min_trend", "shown_value", "spread", "stage_gap", "stage_means", "sweep_values",
                               "trend", "value_at"),
    "qpmlib.analysis.inspection": ("inspect_run",),
    "qpmlib.analysis.peers": ("example_indices", "named_features", "peer_explanations", "peer_records", "peer_table",
                              "quoted_values"),
    "qpmlib.analysis.pairs": ("class_pair_features", "confused_pairs_table", "pair_part_scores"),
    "qpmlib.analysis.localisation": ("plausibility_example", "probe_vs_qpm"),
    "qpmlib.analysis.failures": ("FAILURE_CATEGORIES", "category_counts", "confusing_features_table",
                                 "failure_data", "failure_examples"),
    "qpmlib.analysis.standin": ("artefact_table", "artefacts_appear", "calibration_table", "card_table",
                                "probe_headlines", "probe_table", "register_twins", "shown_standins", "token_norms_of",
                                "part_probe_table", "twin_part_table"),
    "qpmlib.analysis.report": ("compute_time", "discrepancy_table", "profile_differences", "reproduction_counts",
                               "setting_reason", "stage_origins", "origins_summary"),
    "qpmlib.figures.plots": ("bar_beside_paper", "cosine_histogram", "depth_plot", "lambda_sweep_plot",
                             "radar_plot", "sweep_heatmap"),
    "qpmlib.figures.explanations": ("explanation_figure", "peer_explanations_figure", "sweep_maps_figure"),
    "qpmlib.figures.walkthrough": ("image_walkthrough",),
    "qpmlib.figures.localisation": ("plausibility_figure", "probe_vs_qpm_figure"),
    "qpmlib.figures.standin": ("loss_curves_figure", "norm_histogram_figure", "pca_figure"),
}

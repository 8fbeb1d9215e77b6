"""The paper's own numbers, its claims and the paper-vs-code differences, as data (DINO-QPM, arXiv 2604.07166).

Every value printed in Tables 1-4 of the paper, and every number its text states about Figs. 2 and 7-13,
lives here as a literal, one line per table row, so that it can be checked against the paper by eye; so do the
differences between the paper and the authors' code (:data:`DISCREPANCIES`, reference_spec §10).
Chapters put these next to the book's own results (:mod:`qpmlib.analysis.summary`) and judge the claims with
:mod:`qpmlib.analysis.claims`; nothing here is computed.

Sources and caveats:

- All accuracy and interpretability values are percentages (the reference code computes fractions in
  [0, 1]; the paper multiplies by 100).
- The paper reports mean over 5 seeds (15 for the base DINO-QPM configuration, Sec. 9). The supplementary
  "Detailed Results" with standard deviations (Sec. 13) did not survive in the text version of the paper
  this book works from (only the heading is present), so ``std`` is NaN for every value here. Fill it in
  from the PDF if you have it; the tables code already shows ``mean ± std`` when std is given.
- Cells printed as "−" in the paper (DINO-QPM Compact has no SID@5: it assigns 4 < 5 features per class)
  are kept as rows with value NaN and a note, so every table has its full shape.
- The ResNet50 rows of Tables 1-2 are quoted by the paper from QPM [44]; this book does not re-run them
  (``METHODS[...].reproduced`` is False).
- An AI-generated summary page of the paper (seed 000) quotes "SID@5=0.295, class-independence=0.690,
  contrastiveness=0.293"; these contradict Table 1 and are not used.

Public names: ``METHODS``, ``METRICS``, ``DATASETS``, ``TABLES``, ``TABLE3_SETTINGS``, ``TABLE4_BACKBONES``,
``FIG2_AXES``, ``FIG2_METHODS``, ``CLAIMS`` (:func:`claim`), ``DISCREPANCIES``, ``paper_values``,
``paper_value``, ``method_display``, ``metric_display``; the peer heads' published numbers: ``PEER_DISPLAY``,
``PEER_VALUES`` (:func:`peer_values`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

NAN = float("nan")


@dataclass(frozen=True)
class Method:
    """One row label of Tables 1-2: a method the paper compares."""

    key: str  # canonical name shared with the pipeline and the results store
    display: str  # how the book prints it
    reproduced: bool  # False: the paper quotes it from elsewhere and this book only reports it
    localised: bool  # Table 1 "Local. Features": the feature vector is an average of feature maps
    note: str = ""


@dataclass(frozen=True)
class Metric:
    """One metric column of the paper's tables."""

    key: str
    display: str
    unit: str  # "%", "count" or "s"
    higher_is_better: bool


METHODS: dict[str, Method] = {
    m.key: m
    for m in (
        Method("linear_probe", "DINOv2 f_CLS linear probe", True, False,
               "linear layer on the frozen CLS token (reference_spec §6.1)"),
        Method("dense", "Dense F_froz", True, True,
               "the dense model of DINO-QPM before the QP; Table 2 calls it 'DINOv2 F_froz Baseline'"),
        Method("resnet50_baseline", "ResNet50 baseline", False, True,
               "quoted from QPM [44]; fine-tuned ResNet50, reported only"),
        Method("resnet50_qpm", "ResNet50 QPM", False, True,
               "quoted from QPM [44]; end-to-end QPM on ResNet50, reported only"),
        Method("dino_sldd", "DINO-SLDD", True, True, "SLDD feature selection on the DINO adapter (§6.3)"),
        Method("dino_qsenn", "DINO-QSENN", True, True, "Q-SENN feature selection on the DINO adapter (§6.4)"),
        Method("dino_qpm", "DINO-QPM", True, True, "N*_f = 50, N^c_f = 5"),
        Method("dino_qpm_compact", "DINO-QPM Compact", True, True, "N*_f = 40, N^c_f = 4"),
    )
}

METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("accuracy", "Accuracy", "%", True),
        Metric("plausibility", "Plausibility", "%", True),
        Metric("sid_at_5", "SID@5", "%", True),
        Metric("class_independence", "Class-Independence", "%", True),
        Metric("contrastiveness", "Contrastiveness", "%", True),
        Metric("patch_contextualisation", "Patch Contextualisation", "%", True),
        Metric("n_features", "N*_f", "count", False),
        Metric("n_per_class", "N^c_f", "count", False),
        Metric("seconds_per_epoch", "Training time per epoch [s]", "s", False),
    )
}

#: Dataset keys as in ``qpmlib.config`` ("any": Table 2 does not name a dataset).
DATASETS: dict[str, str] = {
    "cub": "CUB-200-2011",
    "cars": "Stanford Cars",
    "synthbirds": "SynthBirds",
    "any": "(not dataset specific)",
}

# ---------------------------------------------------------------------------------------------------
# Table 1 (page 6): accuracy and interpretability, all in %. Columns in the paper's printed order.
_T1_COLUMNS = (
    ("accuracy", "cub"), ("accuracy", "cars"),
    ("plausibility", "cub"),
    ("sid_at_5", "cub"), ("sid_at_5", "cars"),
    ("class_independence", "cub"), ("class_independence", "cars"),
    ("contrastiveness", "cub"), ("contrastiveness", "cars"),
)
_T1_ROWS = (
    #  method               Acc CUB  Acc CARS  Plaus.  SID CUB  SID CARS  CI CUB  CI CARS  Con CUB  Con CARS
    ("linear_probe",         87.9,    91.7,    42.6,   50.9,    51.5,     99.2,   99.1,    59.2,    60.9),
    ("dense",                78.1,    92.9,    32.7,   91.8,    93.1,     98.8,   98.7,    84.5,    82.8),
    ("resnet50_baseline",    83.9,    92.5,    60.7,   57.1,    51.5,     98.0,   97.9,    74.6,    75.1),
    ("resnet50_qpm",         82.9,    92.1,    82.9,   89.6,    88.2,     96.8,   97.8,    93.6,    97.1),
    ("dino_sldd",            84.6,    92.9,    78.0,   88.7,    90.9,     94.4,   93.9,    93.0,    94.9),
    ("dino_qsenn",           85.4,    93.3,    86.0,   91.5,    92.6,     93.6,   94.0,    94.4,    94.9),
    ("dino_qpm",             88.3,    94.0,    95.0,   90.1,    91.7,     93.7,   93.7,   100.0,   100.0),
    ("dino_qpm_compact",     88.3,    94.0,    94.4,    NAN,     NAN,     93.8,   93.6,   100.0,   100.0),
)
_T1_NOTES = {
    ("dino_qpm_compact", "sid_at_5"): "'−' in the paper: SID@5 needs 5 features per class, Compact has 4",
}

# Table 2 (page 6): model complexity and training time per epoch (RTX 3090, cached embeddings; Sec. 9).
_T2_COLUMNS = (("n_features", "any"), ("n_per_class", "any"), ("seconds_per_epoch", "any"))
_T2_ROWS = (
    #  method               N_f   N^c_f   s/epoch
    ("linear_probe",         768,  768,    3),
    ("dense",                512,  512,    6),
    ("resnet50_baseline",   2048, 2048,   40),
    ("resnet50_qpm",          50,    5,   40),
    ("dino_sldd",             50,    5,    6),
    ("dino_qsenn",            50,    5,    6),
    ("dino_qpm",              50,    5,    6),
    ("dino_qpm_compact",      40,    4,    6),
)

# Table 3 (page 6): input source x register tokens, DINOv2 ViT-B/14, CUB-2011, in %.
_T3_COLUMNS = (("accuracy", "cub"), ("plausibility", "cub"))
_T3_ROWS = (
    #  row            Acc    Plaus.
    ("cls_noreg",     87.3,  96.9),
    ("cls_reg",       87.6,  99.2),
    ("patch_noreg",   83.3,  73.5),
    ("patch_reg",     88.3,  95.0),
)
#: What each Table 3 row sets: the feature vector's source as ``qpmlib.model`` pooling ("cls": MLP(f_CLS),
#: feature maps still from MLP(patches); "avg_pooling": average of MLP(patches), the DINO-QPM default) and
#: the backbone (a ``qpmlib.backbones.BACKBONES`` name).
TABLE3_SETTINGS: dict[str, dict[str, object]] = {
    "cls_noreg": {"display": "f_CLS, no registers", "pooling": "cls", "registers": False,
                  "localised": False, "backbone": "dinov2_vitb14"},
    "cls_reg": {"display": "f_CLS, registers", "pooling": "cls", "registers": True,
                "localised": False, "backbone": "dinov2_vitb14_reg"},
    "patch_noreg": {"display": "F_froz, no registers", "pooling": "avg_pooling", "registers": False,
                    "localised": True, "backbone": "dinov2_vitb14"},
    "patch_reg": {"display": "F_froz, registers", "pooling": "avg_pooling", "registers": True,
                  "localised": True, "backbone": "dinov2_vitb14_reg"},
}

# Table 4 (page 6): backbone architecture, DINO-QPM on CUB-2011, in %.
_T4_COLUMNS = (("accuracy", "cub"), ("patch_contextualisation", "cub"))
_T4_ROWS = (
    #  row (= backbone key)   Acc    Patch Context.
    ("dino_vitb16",           37.1,   8.9),
    ("dinov2_vits14_reg",     83.4,  42.9),
    ("dinov2_vitb14_reg",     88.3,  43.9),
    ("dinov2_vitl14_reg",     86.5,   2.2),
)
#: Display names of Table 4's rows; the keys are ``qpmlib.backbones.BACKBONES`` names.
TABLE4_BACKBONES: dict[str, str] = {
    "dino_vitb16": "DINO ViT-B/16",
    "dinov2_vits14_reg": "DINOv2 ViT-S/14 Reg.",
    "dinov2_vitb14_reg": "DINOv2 ViT-B/14 Reg.",
    "dinov2_vitl14_reg": "DINOv2 ViT-L/14 Reg.",
}

_TABLE_SOURCES = {
    "table1": (_T1_COLUMNS, _T1_ROWS, "Table 1: comparison with interpretable models (%)"),
    "table2": (_T2_COLUMNS, _T2_ROWS, "Table 2: compactness and training time per epoch"),
    "table3": (_T3_COLUMNS, _T3_ROWS, "Table 3: input source and register tokens, CUB (%)"),
    "table4": (_T4_COLUMNS, _T4_ROWS, "Table 4: backbone architecture, CUB (%)"),
}

#: Table name -> caption (short).
TABLES: dict[str, str] = {name: caption for name, (_, _, caption) in _TABLE_SOURCES.items()}

# ---------------------------------------------------------------------------------------------------
# Fig. 2 (page 2): heptagon radar on CUB. The caption gives only DINO-QPM's area (98.4 % of the full
# heptagon). Axes, their order, the 1/x inversion of the two compactness counts, the division of every axis
# by its maximum over the plotted models, and the four models are those of the authors' radar script
# (``dino_qpm/posttraining/visualisation/radar_plot.py`` at commit 01690f22; removed before HEAD). With the
# Table 1-2 numbers this recipe gives exactly 98.4 % for DINO-QPM (checked in tests/test_plots.py).
FIG2_AXES: tuple[tuple[str, str], ...] = (
    ("accuracy", "cub"),
    ("plausibility", "cub"),
    ("sid_at_5", "cub"),
    ("n_features", "any"),  # plotted as 1 / N*_f
    ("n_per_class", "any"),  # plotted as 1 / N^c_f
    ("class_independence", "cub"),
    ("contrastiveness", "cub"),
)
FIG2_METHODS: tuple[str, ...] = ("linear_probe", "dino_qpm", "resnet50_qpm", "resnet50_baseline")


@dataclass(frozen=True)
class Claim:
    """A statement of the paper's text about a figure, with the test this book judges it by.

    :func:`qpmlib.analysis.claims.judge` compares our statistic (``quantity``) with ``value`` by ``relation``;
    the claim carries both, so every chapter judges it the same way.
    """

    key: str  # unique name, e.g. "fig7_gap"
    source: str  # "fig2", "fig7", ..., "sec1", "sec9"
    quantity: str  # the statistic the book measures, in words
    relation: str  # how the statistic must compare with `value`: ">", ">=", "<", "<=" or "≈" (within tolerance)
    value: float  # the bound of that comparison, in `unit`
    unit: str  # "%", "points" (percentage points), "ρ" (a Spearman correlation), "seeds"
    text: str  # the paper's wording
    stated: float | None = None  # the number the paper states, where the test's bound is not that number
    tolerance: float = 0.0  # for "≈": agreement within ± tolerance


#: Trend claims are judged by the sign of a Spearman correlation (> 0: the metric rises with the swept value);
#: the two numbers the ablation text gives by a bound in accuracy points.
CLAIMS: tuple[Claim, ...] = (
    Claim("fig2", "fig2", "DINO-QPM radar area, % of the full heptagon", "≈", 98.4, "%",
          "DINO-QPM ... reaching 98.4% of the maximal score calculated as the fraction of area of the heptagon",
          tolerance=1.0),
    Claim("sec1", "sec1", "DINO-QPM minus Dense F_froz accuracy on CUB", ">", 10.0, "points",
          "outperforming the dense average-pooled variant by more than 10% on CUB-2011"),
    Claim("fig7_dense", "fig7", "spread (max − min) of the dense accuracy over the MLP depths, patch input", "<",
          1.0, "points", "the number of layers in the MLP has no measurable impact on the dense model"),
    Claim("fig7_gap", "fig7", "DINO-QPM minus dense accuracy at the deepest MLP, patch input; judged at half "
          "the stated gap", ">=", 5.0, "points",
          "the QPM is able to outperform its dense model by almost 10% using F_froz", stated=10.0),
    Claim("fig8", "fig8", "spread (max − min) of DINO-QPM's accuracy over the (N*_f, N^c_f) grid", "<", 1.0,
          "points", "the overall variation in accuracy across both datasets is remarkably low (< 1%)"),
    Claim("fig9", "fig9", "Spearman ρ between λ_L1-FM and DINO-QPM's accuracy or Plausibility", ">", 0.0, "ρ",
          "Higher penalty weights yield substantial improvements in both accuracy and plausibility"),
    Claim("fig11", "fig11", "Spearman ρ between λ_div and SID@5", ">", 0.0, "ρ",
          "increasing the weight of this loss has a strong positive correlation with SID@5"),
    Claim("fig12", "fig12", "Spearman ρ between λ_L1-FV and DINO-QPM's accuracy", ">", 0.0, "ρ",
          "we observe its positive impact on accuracy"),
    Claim("fig13", "fig13", "smallest over N_f of the Spearman ρ between N_hidden and accuracy", ">", 0.0, "ρ",
          "Small accuracy gains are observed up to N_hidden = 2048, regardless of the number of features N_f"),
    Claim("sec9", "sec9", "seeds per reported mean", "≈", 5.0, "seeds",
          "mean and standard deviation across 5 random seeds ... DINO-QPM base configuration ... 15 seeds"),
)


def claim(key: str) -> Claim:
    """The claim called ``key``.

    Raises:
        ValueError: for an unknown key (the message lists the valid ones).
    """
    for c in CLAIMS:
        if c.key == key:
            return c
    raise ValueError(f"unknown claim {key!r}; valid: {', '.join(c.key for c in CLAIMS)}")


#: reference_spec §10 (rows 1-15) and later findings: (row, topic, paper, reference code, what this book does by
#: default, the switch).
DISCREPANCIES: tuple[tuple[int, str, str, str, str, str], ...] = (
    (1, "input normalisation", "resize 224, dataset mean", "resize 224×224, dataset mean/std, then per-image "
     "min-max to [0, 1]", "reference code", "data.normalisation = 'reference' | 'imagenet'"),
    (2, "QP components", "A, R and a locality bias b", "b disabled; A and R only", "reference code",
     "qpmlib.qp.solve_qpm(b=None)"),
    (3, "R penalty", "as in QPM", "threshold chosen on 2R, penalty tested on R", "reference code",
     "qp.r_mode = 'dinoqpm' | 'qpm' | 'none'"),
    (4, "BLDD in fine-tune", "W_sparse · f^(s)", "W_bin · ((f_S − μ_S)/σ_S), μ, σ frozen from dense train "
     "features, no bias", "reference code", "model.standardise = True | False"),
    (5, "optimiser", "schedule-free Adam", "AdamWScheduleFree, averaged weights, no BN recalibration",
     "reference code", "train.recalibrate_bn = False | True"),
    (6, "epochs / batch", "40 / 50, batch 32 / 32", "main YAML 25 / 25, batch 32 / 16",
     "paper's text on profile `paper`, reference code on `paper_code`; fewer epochs on demo/smoke",
     "profile paper | paper_code (qpmlib.config.PRESET_FIELDS: train.dense_epochs, train.ft_epochs, batch sizes)"),
    (7, "λ_L1-FV", "1", "1 only in qpm/dinov2.yaml, 0 elsewhere (the DINO v1 row runs qpm/dino.yaml)",
     "1 for DINO-QPM on DINOv2; 0 and qpm/dino.yaml's sizes for Table 4's DINO v1 row",
     "train.ft_l1_fv; qpmlib.runs.methods.BACKBONE_SETTINGS"),
    (8, "FDL scaling vector", "f_d / max f", "the post-dropout feature vector", "reference code",
     "train.fdl_scale = 'features' | 'map_mean'"),
    (9, "Plausibility data", "X_train", "test split", "reference code", "computed on the test split"),
    (10, "Plausibility map", "Σ_d W_ĉd F_d", "the same minus its minimum", "reference code",
     "qpmlib.metrics.plausibility(subtract_min=True | False)"),
    (11, "SID@5 data", "X_train", "test split; samples whose class has ≥ 5 weights", "reference code",
     "computed on the test split"),
    (12, "GradCAM", "Grad-CAM", "CAM (weights × maps), no gradients", "reference code", "qpmlib.runs.evaluate.cam"),
    (13, "MLP", "4 layers with ReLU and BN", "last layer also BN+ReLU → non-negative features", "reference code",
     "model.last_layer_bn_relu = True | False"),
    (14, "baselines", "pipeline closely resembling ours", "β 0.196, no L1 losses, head dropout 0.1, trainable "
     "μ/σ; QSENN 4×25 epochs", "reference code",
     "qpmlib.sparse.SLDDSettings / QSENNSettings; baselines.qsenn_schedule"),
    (15, "pos-embed interpolation", "–", "antialias False, offset 0.1", "reference code",
     "qpmlib.backbones.build_backbone(pos_embed_interpolation='reference' | 'hub')"),
    (16, "SLDD selection λ_max", "–", "λ_max of the selection path from glm-saga's metadata of the raw features "
     "(whole training split); the path runs on the standardised 90 % split", "reference code",
     "qpmlib.sparse.SLDDSettings.lambda_max_source = 'metadata' | 'split'"),
    (17, "Gurobi stopping rule", "–", "MIPGap 5e-3, TimeLimit 10,800 s per optimize() call",
     "MIPGap 5e-3; TimeLimit = qp.time_limit for the whole solve (10,800 s on the paper profiles)",
     "qp.gurobi = 'reference' | 'exact' (qpmlib.qp.solve_qpm(gurobi=...))"),
)

_COLUMNS = ["table", "row", "method", "dataset", "metric", "value", "std", "unit", "note"]


def _row_method(table: str, row: str) -> str:
    """The method a table row belongs to: Tables 1-2 are per method, Tables 3-4 vary DINO-QPM."""
    return row if table in ("table1", "table2") else "dino_qpm"


def _build() -> pd.DataFrame:
    records = []
    for table, (columns, rows, _) in _TABLE_SOURCES.items():
        for row, *values in rows:
            if len(values) != len(columns):  # a typo in the literals above
                raise RuntimeError(f"{table} row {row!r} has {len(values)} values, expected {len(columns)}")
            for (metric, dataset), value in zip(columns, values):
                note = _T1_NOTES.get((row, metric), "") if table == "table1" else ""
                method = _row_method(table, row)
                if not METHODS[method].reproduced:
                    note = (note + "; " if note else "") + "reported only (quoted from QPM [44])"
                records.append({
                    "table": table, "row": row, "method": method, "dataset": dataset, "metric": metric,
                    "value": float(value), "std": NAN, "unit": METRICS[metric].unit, "note": note,
                })
    return pd.DataFrame.from_records(records, columns=_COLUMNS)


_PAPER = _build()


def _check_choice(name: str, value: str | None, valid) -> None:
    if value is not None and value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid names: {', '.join(sorted(valid))}")


def paper_values(
    table: str | None = None,
    *,
    row: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """The paper's reported values as a long table, optionally filtered.

    Args:
        table: "table1" .. "table4", or None for all tables.
        row: row key (the method key in Tables 1-2, a ``TABLE3_SETTINGS`` or ``TABLE4_BACKBONES`` key in 3-4).
        method: a ``METHODS`` key (Tables 3-4 rows all belong to "dino_qpm").
        dataset: "cub", "cars" or "any".
        metric: a ``METRICS`` key.

    Returns:
        A new DataFrame (one row per reported cell, the paper's order) with columns table, row, method,
        dataset, metric, value (float; NaN where the paper prints "−"), std (NaN: not in our copy of the
        paper, see the module docstring), unit ("%", "count", "s") and note.

    Raises:
        ValueError: an unknown table, method, dataset or metric name (the message lists the valid ones).
    """
    _check_choice("table", table, TABLES)
    _check_choice("method", method, METHODS)
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("metric", metric, METRICS)
    frame = _PAPER
    for column, wanted in (("table", table), ("row", row), ("method", method), ("dataset", dataset),
                           ("metric", metric)):
        if wanted is not None:
            frame = frame[frame[column] == wanted]
    return frame.reset_index(drop=True).copy()


def paper_value(table: str, row: str, metric: str, dataset: str) -> float:
    """One reported number.

    Args:
        table: "table1" .. "table4".
        row: the row key (see ``paper_values``).
        metric: a ``METRICS`` key.
        dataset: "cub", "cars" or "any" (Table 2).

    Returns:
        The value in the paper's unit (percent for accuracy-like metrics); NaN for a "−" cell.

    Raises:
        ValueError: the paper has no such cell (the message lists the table's rows and columns).
    """
    frame = paper_values(table, row=row, metric=metric, dataset=dataset)
    if frame.empty:
        whole = paper_values(table)
        rows = ", ".join(dict.fromkeys(whole["row"]))
        cols = ", ".join(dict.fromkeys(whole["metric"] + "/" + whole["dataset"]))
        raise ValueError(f"{table} has no cell ({row!r}, {metric}/{dataset}); rows: {rows}; columns: {cols}")
    return float(frame["value"].iloc[0])


def method_display(key: str) -> str:
    """Display name of a method key (also a peer head's), of a Table 3 row or of a Table 4 backbone; unknown keys
    pass through."""
    if key in METHODS:
        return METHODS[key].display
    if key in PEER_DISPLAY:
        return PEER_DISPLAY[key]
    if key in TABLE3_SETTINGS:
        return str(TABLE3_SETTINGS[key]["display"])
    return TABLE4_BACKBONES.get(key, key)


def metric_display(key: str) -> str:
    """Display name of a metric key; unknown keys pass through unchanged."""
    return METRICS[key].display if key in METRICS else key



# ---------------------------------------------------------------------------------------------------
# The peer heads' own publications (issue 17): quoted next to the book's runs of the same heads, never as ours.
#: Display names of the peer heads (:data:`qpmlib.runs.methods.PEER_KEYS`).
PEER_DISPLAY: dict[str, str] = {"protosvit": "ProtoS-ViT", "protofm": "ProtoFM", "klc": "KLC"}


@dataclass(frozen=True)
class PeerValue:
    """One number a peer head's publication reports.

    Attributes:
        method: a key of :data:`PEER_DISPLAY`.
        dataset: a key of :data:`DATASETS` ("any": the source names no dataset).
        metric: ``accuracy`` (%), ``n_prototypes`` (prototypes in all, the "global size"), ``n_per_image``
            (prototypes per explanation, the "local size"), ``bank_size`` (prototypes before pruning) or
            ``n_parameters``.
        value: the number as published ("about" values as printed).
        source: where it is printed.
    """

    method: str
    dataset: str
    metric: str
    value: float
    source: str


PEER_VALUES: tuple[PeerValue, ...] = (
    PeerValue("protosvit", "cub", "accuracy", 85.2, "KLC report, Table 1 (quoting ProtoS-ViT)"),
    PeerValue("protosvit", "cub", "n_per_image", 6, "KLC report, Table 1, 'Prototypes Count'"),
    PeerValue("protosvit", "any", "n_prototypes", 39, "ProtoS-ViT (arXiv 2406.10025): global size about 39"),
    PeerValue("protosvit", "any", "n_per_image", 6.5, "ProtoS-ViT (arXiv 2406.10025): local size 6-7 per image"),
    PeerValue("protosvit", "any", "bank_size", 300, "ProtoS-ViT (arXiv 2406.10025): 300 prototypes"),
    PeerValue("protofm", "any", "bank_size", 300, "ProtoFM (arXiv 2502.19577): a bank of 300 prototypes"),
    PeerValue("protofm", "any", "n_parameters", 1e6, "ProtoFM (arXiv 2502.19577): a head of about 1M parameters"),
    PeerValue("klc", "cub", "accuracy", 82.7, "KLC report, Table 1"),
    PeerValue("klc", "cub", "n_per_image", 3, "KLC report, Table 1, 'Prototypes Count' (3 prototypes per query)"),
)


def peer_values() -> pd.DataFrame:
    """:data:`PEER_VALUES` as a frame (method, dataset, metric, value, source), all marked ``quoted``."""
    frame = pd.DataFrame([vars(v) for v in PEER_VALUES])
    return frame.assign(quoted=True)

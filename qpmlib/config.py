"""Configuration: profiles (one name picks every size of a run) and dotted overrides of them.

Five profiles exist:

* ``smoke``: tiny SynthBirds at 112 px and the smaller stand-in backbone; the whole book in a few minutes on 2
  CPU cores (CI, nbval).
* ``demo`` (default): SynthBirds at 224 px and the project's stand-in for DINOv2, ``standin_s14``: a miniature
  DINOv2 that the project pretrained itself on SynthBirds images disjoint from the demo's classes
  (``qpmlib.pretrain``; chapters say so in a banner), without registers because on its patch tokens the dense
  model is more accurate than on those of its twin with registers (chapter 03 measures both). The real DINOv2
  stays selectable by name.
* ``paper``: CUB-200-2011 and Stanford Cars with pretrained DINOv2 ViT-B/14-reg, 5 seeds, and the **paper's
  text** where it and the authors' code disagree on a hyperparameter (Sec. 9: 40 dense / 50 fine-tune epochs,
  batch 32 in both stages); meant for a GPU and the real data.
* ``paper_code``: the same with the **authors' code** (`qpm/dinov2.yaml`, reference_spec §4.2): 25 / 25 epochs,
  fine-tune batch 16. The two presets differ only in :data:`PRESET_FIELDS`; every metric definition and every
  other paper-vs-code difference follows the reference code in both (:data:`qpmlib.paper.DISCREPANCIES`).
* ``paper_shapes``: every shape of ``paper`` (200 CUB-layout and 196 Cars-layout classes, ViT-B/14-reg and the
  Table 3-4 backbones, MLP 4 x 2048 -> 512, QP 50/5 over 200 classes, glm paths at 512 x 200, every sweep grid)
  at 112 px (an 8 x 8 patch grid: the token count is the one shape it scales down), one image per class and
  split, random backbone weights, one epoch per stage, one seed and 5 lambda steps: the proof that the whole book
  runs at the paper's scale (on 2 CPU cores in about an hour).

Profiles are frozen dataclasses so that a misspelt field fails when the profile is built.
Use :func:`get_profile` to fetch one by name (``QPMLIB_PROFILE`` sets the default name) and
:func:`apply_overrides` to change fields by dotted name. Whether every value is valid (a known backbone, solver,
dataset ...) is checked by :func:`qpmlib.runs.checks.check_profile` before any run starts, since the valid
values live in the modules that use them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DataConfig",
    "BackboneConfig",
    "ModelConfig",
    "QPConfig",
    "TrainConfig",
    "SweepConfig",
    "BaselineConfig",
    "HeadsConfig",
    "StageResources",
    "ClusterConfig",
    "Profile",
    "PROFILES",
    "DEFAULT_PROFILE",
    "get_profile",
    "default_profile_name",
    "PRESET_FIELDS",
    "GPU_PROFILES",
    "SECTIONS",
    "apply_overrides",
]


@dataclass(frozen=True)
class DataConfig:
    """Which images feed the pipeline."""

    dataset: str  # "synthbirds" | "cub" | "cars" | "synthcars" (SynthBirds in Stanford Cars' layout)
    image_size: int  # px; images are resized anisotropically to image_size x image_size (reference_spec §4.4)
    normalisation: str = "reference"  # "reference" (dataset mean/std then per-image min-max, §4.4) | "imagenet"
    # SynthBirds generator sizes (ignored for real datasets)
    n_classes: int = 0  # number of classes
    n_train: int = 0  # training images per class
    n_test: int = 0  # test images per class
    seed: int = 0  # generator seed
    shortcut: bool = False  # tie background to class in train only (failure-analysis variant)


@dataclass(frozen=True)
class BackboneConfig:
    """Frozen feature extractor."""

    name: str  # key of qpmlib.backbones.BACKBONES
    weights: str = "auto"  # "auto" (pretrained if available, else fixed random) | "random" | a local file path
    batch_size: int = 32  # images per forward pass during extraction


@dataclass(frozen=True)
class ModelConfig:
    """Interpretability adapter (reference_spec §2)."""

    n_layers: int = 4  # MLP depth; every layer is Linear -> BN -> ReLU (§2.2); 0 = no MLP
    hidden_size: int = 2048  # width of hidden layers
    n_features: int = 512  # N_f, dense features
    pooling: str = "avg_pooling"  # "avg_pooling" (DINO-QPM) | "cls" (f_CLS ablation, Table 3)
    dropout: float = 0.2  # dense head dropout (§2.4)
    last_layer_bn_relu: bool = True  # BN+ReLU after the last Linear too (reference code; §10 row 13)
    standardise: bool = True  # sparse head uses (f_S - mu)/sigma from dense train features (reference; §10 row 4)


@dataclass(frozen=True)
class QPConfig:
    """Feature selection and assignment (reference_spec §1)."""

    n_selected: int = 50  # N*_f
    n_per_class: int = 5  # N^c_f
    r_mode: str = "dinoqpm"  # "dinoqpm" (threshold on 2R, penalty on R, §1.6) | "qpm" (original QPM) | "none"
    solver: str = "auto"  # "auto" | "open" | "gurobi" | "exhaustive"
    time_limit: float | None = 60.0  # seconds per solve (the open solver's search; Gurobi's TimeLimit); None: no limit
    # Gurobi's other settings (qpmlib.qp.GUROBI_SETTINGS): "reference" (MIPGap 5e-3, the reference's DINO configs)
    # | "exact" (MIPGap 1e-6, certified optimum); time_limit above replaces their TimeLimit
    gurobi: str = "reference"
    # the open solver's rounds of iterated local search after its construction, at most (0: construction only;
    # None: no cap). A time limit makes the selection depend on the machine's speed and load; a cap does not
    rounds: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Dense and fine-tune stages (reference_spec §3-4); defaults are `qpm/dinov2.yaml`."""

    dense_epochs: int = 25
    dense_batch_size: int = 32
    dense_lr: float = 1e-3
    dense_weight_decay: float = 7e-4
    dense_fdl: float = 0.5  # lambda_div in the dense stage
    ft_epochs: int = 25
    ft_batch_size: int = 16
    ft_lr: float = 5e-3
    ft_weight_decay: float = 8e-4
    ft_fdl: float = 1.0  # lambda_div in fine-tuning
    ft_l1_fm: float = 5.0  # lambda_L1-FM
    ft_l1_fv: float = 1.0  # lambda_L1-FV
    recalibrate_bn: bool = False  # recompute BN stats for the schedule-free averaged weights (reference: no; §4.1)
    fdl_scale: str = "features"  # FDL map scale: "features" (post-dropout v, reference) | "map_mean" (paper; §3.2)
    precision: str = "fp32"  # "fp32" (reference) | "bf16" (autocast; the fast choice on a GPU)
    device: str = "auto"  # "auto" | "cpu" | "cuda"


#: Fig. 8's grid on the paper profiles: every (N*_f, N^c_f) of N*_f in 20..60 and N^c_f in 3..7; it holds the
#: paper's default (50, 5) and Compact (40, 4). The paper prints no grid values (and the reference's sweep tooling
#: was removed, reference_spec §8.3), so the range is this book's choice around the two settings the paper runs.
PAPER_SPARSITY: tuple[tuple[int, int], ...] = tuple((n, c) for n in (20, 30, 40, 50, 60) for c in (3, 4, 5, 6, 7))


@dataclass(frozen=True)
class SweepConfig:
    """Grids for the ablation chapters (values are what each sweep tries); the defaults are the paper profiles'.

    The paper prints no grid values, only the figures' axes, so the grids are this book's choice: N_hidden
    512-4096 (4096 shows whether the gain stops at 2048, Fig. 13), N_f 128-1024, MLP depth 0 (no MLP) to 4,
    :data:`PAPER_SPARSITY`, and five loss weights around the paper's own (at least four grid points, so that a
    trend claim can be judged, :mod:`qpmlib.analysis.claims`).
    """

    seeds: tuple[int, ...] = ()  # seeds of every sweep point; empty: the profile's seeds

    l1_fm: tuple[float, ...] = (0.0, 0.1, 1.0, 5.0, 10.0)  # Fig. 9
    fdl: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0, 2.0)  # Fig. 11
    l1_fv: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0, 5.0)  # Fig. 12
    n_layers: tuple[int, ...] = (0, 1, 2, 3, 4)  # Fig. 7
    hidden_size: tuple[int, ...] = (512, 1024, 2048, 4096)  # Fig. 13
    n_features: tuple[int, ...] = (128, 256, 512, 1024)  # Fig. 13
    sparsity: tuple[tuple[int, int], ...] = PAPER_SPARSITY  # Fig. 8: (N*_f, N^c_f)
    backbones: tuple[str, ...] = (  # Table 4
        "dino_vitb16",
        "dinov2_vits14_reg",
        "dinov2_vitb14_reg",
        "dinov2_vitl14_reg",
    )


@dataclass(frozen=True)
class BaselineConfig:
    """Sizes of Table 1's other methods where the reference code sets them apart from DINO-QPM's."""

    # True: the reference code's epochs and batch sizes, the linear probe 40 dense epochs (§6.1) and
    # DINO-SLDD/QSENN 40 dense and 50 fine-tune epochs at batch 32/16 (§6.3); False: the profile's train.* sizes.
    reference_sizes: bool = True
    glm_n_lambdas: int = 100  # steps of the SLDD/QSENN lambda paths (glm-saga's k, §6.3)
    # DINO-QSENN's iterations: "reference" (what the reference code runs: 4 x train.ft_epochs at train.ft_lr,
    # §6.4, §9 item 5) | "qsenn" (the intended Q-SENN schedule: 4 x 10 epochs, lr x 0.9 per iteration)
    qsenn_schedule: str = "reference"
    # (N*_f, N^c_f) of DINO-QPM Compact (§8.3); None: scaled from qp.* (qpmlib.runs.methods.compact_sizes)
    compact: tuple[int, int] | None = (40, 4)


@dataclass(frozen=True)
class HeadsConfig:
    """Sizes of the peer interpretable heads (:mod:`qpmlib.heads`: ProtoS-ViT, ProtoFM, KLC) on the cached tokens.

    The defaults are the papers' CUB settings (ProtoS-ViT's ``classification_prototype.yaml``, KLC's code);
    every other hyperparameter is the head's configuration default (:class:`qpmlib.heads.ProtoSViTConfig` ...).
    """

    n_prototypes: int = 300  # K of ProtoS-ViT and ProtoFM
    prototype_dim: int | None = None  # E; None: each head's reference width (ProtoS-ViT 512, ProtoFM 256)
    hidden_dim: int | None = None  # hidden width of the projections; None: the token width D (the reference)
    epochs: int = 80
    batch_size: int = 256
    warmup_epochs: int = 15  # linear warm-up, also the ramp of the sparsity loss
    cosine_epochs: int | None = 300  # horizon of the half cosine (the reference's 300); None: epochs
    klc_prototypes_per_class: int = 5  # KLC's prototype images per class (5 in its code)
    klc_top_k: int = 5  # prototypes KLC consults per query (5 in its code, 3 in its report)


@dataclass(frozen=True)
class StageResources:
    """What one Slurm job of a stage asks for (:class:`qpmlib.runs.executor.Resources` is built from it)."""

    gpus: int = 1  # GPUs per job (0: none)
    cpus: int = 8  # CPU cores per job
    mem_gb: float = 32.0  # memory per job in GiB
    time_min: int = 240  # wall-clock limit in minutes


@dataclass(frozen=True)
class ClusterConfig:
    """Where the runs the book needs are computed, and the paper-scale figures its dry run estimates with.

    None of these fields is part of a run's identity: a run computed as a Slurm job is stored under the same hash,
    with the same numbers, as the same run computed in the notebook's process.
    """

    # "local" (in the process that needs the run, as chapters always did) | "slurm" (one job per run through
    # submitit); $QPMLIB_EXECUTOR, when set, wins over this field
    executor: str = "local"
    embed: StageResources = StageResources(gpus=1, cpus=8, mem_gb=32.0, time_min=120)  # one split of one backbone
    train: StageResources = StageResources(gpus=1, cpus=8, mem_gb=32.0, time_min=240)  # one run (method, seed, setting)
    partition: str | None = None  # Slurm partition (None: the cluster's default)
    account: str | None = None  # Slurm account (None: the user's default)
    setup: tuple[str, ...] = ()  # shell lines each job runs before Python starts, e.g. "module load cuda/12.4"
    max_retries: int = 2  # how often a job that ended without its result (failed, preempted, cancelled) is resubmitted
    poll_s: float = 30.0  # seconds between two looks at the queue while a chapter or `make runs` waits
    # Paper-scale figures of the dry run's GPU-hour estimate (qpmlib.runs.tasks.estimate_hours): an epoch on
    # CUB's 5,994 training images took 6 s (the MLP models) and 3 s (the CLS linear probe) on the paper's RTX 3090
    # (paper Table 2); an epoch on n images takes n / 5,994 of that. Loading, the QP and the evaluation add
    # run_overhead_s per run; extraction embeds extract_images_per_s images per second.
    seconds_per_epoch: float = 6.0
    probe_seconds_per_epoch: float = 3.0
    run_overhead_s: float = 300.0
    extract_images_per_s: float = 150.0
    # Local compute: processes that `make runs` (qpmlib.runs.executor.compute) computes missing runs in, and the
    # torch threads of every run's training and evaluation, here, in those processes and in Slurm jobs (None: torch's
    # default, the machine's cores). Float sums depend on the thread count, so a fixed count gives the same numbers
    # on every machine and with any number of workers; on 2 busy cores one thread per run is also several times
    # faster than two (benchmarks/bench_demo_stages.py).
    workers: int = 1
    threads: int | None = None


@dataclass(frozen=True)
class Profile:
    """Everything that sizes a run of the book."""

    name: str
    description: str
    data: DataConfig
    backbone: BackboneConfig
    model: ModelConfig
    qp: QPConfig
    train: TrainConfig
    sweeps: SweepConfig = field(default_factory=SweepConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    seeds: tuple[int, ...] = (0,)
    extra_datasets: tuple[str, ...] = ()  # datasets beyond `data.dataset` (paper: Stanford Cars)
    heads: HeadsConfig = field(default_factory=HeadsConfig)  # the peer heads of qpmlib.heads
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where missing runs are computed
    # dotted overrides of the runs on `extra_datasets` beyond the dataset's name, as (key, value) pairs
    # (paper_shapes: the generated Cars stand-in's 196 classes)
    extra_overrides: tuple[tuple[str, Any], ...] = ()

    def replace(self, **changes) -> "Profile":
        """Return a copy with top-level fields replaced (use ``dataclasses.replace`` on parts)."""
        return dataclasses.replace(self, **changes)

    def dataset_overrides(self) -> dict[str, dict[str, Any]]:
        """The dotted overrides that run this profile on each of its datasets: ``{}`` for ``data.dataset``,
        ``{"data.dataset": d, **extra_overrides}`` for every ``d`` of ``extra_datasets``."""
        return {self.data.dataset: {}, **{d: {"data.dataset": d, **dict(self.extra_overrides)}
                                          for d in self.extra_datasets}}


SMOKE = Profile(
    name="smoke",
    description="tiny SynthBirds, the small stand-in backbone: the whole book in minutes on 2 CPU cores (CI, nbval)",
    data=DataConfig(dataset="synthbirds", image_size=112, n_classes=6, n_train=8, n_test=4, seed=0),
    backbone=BackboneConfig(name="standin_t14_reg", weights="auto", batch_size=32),
    model=ModelConfig(n_layers=2, hidden_size=64, n_features=24),
    qp=QPConfig(n_selected=8, n_per_class=2, time_limit=10.0),
    train=TrainConfig(
        dense_epochs=4, dense_batch_size=16, ft_epochs=3, ft_batch_size=16, device="cpu"
    ),
    sweeps=SweepConfig(
        l1_fm=(0.0, 5.0),
        fdl=(0.0, 1.0),
        l1_fv=(0.0, 1.0),
        n_layers=(0, 2),
        hidden_size=(32, 64),
        n_features=(16, 24),
        sparsity=((6, 2), (8, 2)),
        backbones=("standin_t14_reg",),
    ),
    baselines=BaselineConfig(reference_sizes=False, glm_n_lambdas=25, compact=None),
    seeds=(0,),
    heads=HeadsConfig(n_prototypes=16, prototype_dim=16, hidden_dim=16, epochs=4, batch_size=16, warmup_epochs=1,
                      cosine_epochs=None, klc_prototypes_per_class=3, klc_top_k=3),
    # a smoke run is seconds on one core: CPU-only jobs, small enough for a laptop's one-node test cluster
    cluster=ClusterConfig(embed=StageResources(gpus=0, cpus=1, mem_gb=1.0, time_min=15),
                          train=StageResources(gpus=0, cpus=1, mem_gb=1.0, time_min=15), poll_s=2.0),
)

DEMO = Profile(
    name="demo",
    description="SynthBirds at 224 px with the project's stand-in, a miniature DINOv2 pretrained on SynthBirds",
    data=DataConfig(dataset="synthbirds", image_size=224, n_classes=25, n_train=24, n_test=16, seed=0),
    # the stand-in without registers: on its patch tokens the dense model is about ten points more accurate than on
    # its twin's with registers (chapter 03 measures both; the paper's backbone has registers, see chapter 01b)
    backbone=BackboneConfig(name="standin_s14", weights="auto", batch_size=32),
    model=ModelConfig(n_layers=4, hidden_size=128, n_features=64),
    # the open solver's construction (greedy and Lagrangian starts, swap search, exact repair of duplicate
    # assignments): about 5 s per solve, the same selection on every machine, and a higher objective than Gurobi
    # stopped at 30 s (benchmarks/figures/demo_stages_cpu.md), whose result varied with the machine's load
    qp=QPConfig(n_selected=20, n_per_class=5, solver="open", time_limit=None, rounds=0),
    train=TrainConfig(dense_epochs=10, dense_batch_size=32, ft_epochs=8, ft_batch_size=16),
    sweeps=SweepConfig(
        seeds=(0,),  # one seed per sweep point keeps the demo sweeps at minutes on a laptop CPU
        l1_fm=(0.0, 1.0, 5.0, 10.0),
        fdl=(0.0, 0.5, 1.0, 2.0),
        l1_fv=(0.0, 1.0, 5.0),
        n_layers=(0, 1, 2, 4),
        hidden_size=(64, 128),
        n_features=(32, 64),
        sparsity=((15, 3), (20, 5), (30, 5)),
        backbones=("standin_t14", "standin_s14"),  # Table 4: two widths of the stand-in
    ),
    baselines=BaselineConfig(reference_sizes=False, glm_n_lambdas=25, compact=None),
    seeds=(0, 1, 2),
    # the peer heads within minutes on a 2-core CPU (benchmarks/bench_heads.py)
    heads=HeadsConfig(n_prototypes=50, prototype_dim=64, hidden_dim=64, epochs=12, batch_size=64, warmup_epochs=3,
                      cosine_epochs=None),
    # `make book` computes every run first in two processes of one torch thread each (`make runs`), so the numbers
    # are the same on any machine, and 2 cores are used in full (one run per core)
    cluster=ClusterConfig(workers=2, threads=1),
)

#: What the two paper presets set differently: the hyperparameters on which the paper's text (Sec. 9) and the
#: authors' main config (`qpm/dinov2.yaml`) disagree (reference_spec §4.2, §10 row 6). Everything else is shared.
PRESET_FIELDS: tuple[str, ...] = ("train.dense_epochs", "train.ft_epochs", "train.ft_batch_size")

PAPER = Profile(
    name="paper",
    description="CUB-200-2011 + Stanford Cars with pretrained DINOv2 ViT-B/14-reg; the paper's text where it and "
                "the authors' code disagree (40 / 50 epochs, batch 32 / 32)",
    data=DataConfig(dataset="cub", image_size=224),
    backbone=BackboneConfig(name="dinov2_vitb14_reg", weights="pretrained", batch_size=64),
    model=ModelConfig(n_layers=4, hidden_size=2048, n_features=512),
    # 3 h, the reference's Gurobi TimeLimit (`time_limit: 10800`, with MIPGap 5e-3: qp.gurobi = "reference"); the
    # open solver (no licence) stops by itself when its local search stalls (14 s at this size,
    # benchmarks/figures/paper_shapes_cpu.md)
    qp=QPConfig(n_selected=50, n_per_class=5, time_limit=10800.0),
    train=TrainConfig(dense_epochs=40, dense_batch_size=32, ft_epochs=50, ft_batch_size=32, device="cuda"),
    seeds=(0, 1, 2, 3, 4),
    extra_datasets=("cars",),
)

PAPER_CODE = dataclasses.replace(
    PAPER,
    name="paper_code",
    description="as `paper`, with the authors' code where it and the paper's text disagree (`qpm/dinov2.yaml`: "
                "25 / 25 epochs, batch 32 / 16)",
    train=dataclasses.replace(PAPER.train, dense_epochs=25, ft_epochs=25, ft_batch_size=16),
)

PAPER_SHAPES = dataclasses.replace(
    PAPER,
    name="paper_shapes",
    description="every shape of `paper` (200 + 196 classes, ViT-B/14-reg, MLP 4 x 2048 -> 512, QP 50/5, every "
                "grid) at 1 image per class and split, 112 px, random weights, 1 epoch per stage: runs on 2 CPU "
                "cores",
    # 112 px (8 x 8 patches, as `smoke`): a quarter of the 224 px tokens, so the whole book runs in about an hour
    # on 2 cores; the per-stage figures at 224 px are in benchmarks/figures/stage_meter_paper_shapes_cpu.md
    data=DataConfig(dataset="synthbirds", image_size=112, n_classes=200, n_train=1, n_test=1, seed=0),
    backbone=BackboneConfig(name="dinov2_vitb14_reg", weights="random", batch_size=16),
    # on random features the open solver runs to its limit (60 s measured); its shape does not depend on the limit
    qp=QPConfig(n_selected=50, n_per_class=5, time_limit=15.0),
    train=dataclasses.replace(PAPER.train, dense_epochs=1, ft_epochs=1, precision="bf16", device="cpu"),
    baselines=BaselineConfig(reference_sizes=False, glm_n_lambdas=5),
    seeds=(0,),
    extra_datasets=("synthcars",),
    extra_overrides=(("data.n_classes", 196),),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, DEMO, PAPER, PAPER_CODE, PAPER_SHAPES)}
#: Profiles meant for a GPU (``train.device = "cuda"``): on a machine without CUDA they stop before any work
#: (:func:`qpmlib.runs.checks.check_ready`); ``train.device=auto`` runs them anywhere.
GPU_PROFILES: tuple[str, ...] = tuple(p.name for p in PROFILES.values() if p.train.device.startswith("cuda"))
DEFAULT_PROFILE = "demo"


def default_profile_name() -> str:
    """The profile name from ``$QPMLIB_PROFILE``, else ``"demo"``."""
    return os.environ.get("QPMLIB_PROFILE", DEFAULT_PROFILE)


def get_profile(name: str | Profile | None = None) -> Profile:
    """Return the profile called ``name`` (default: :func:`default_profile_name`).

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if isinstance(name, Profile):
        return name
    name = name or default_profile_name()
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}"
        ) from None


#: Sections of a profile that :func:`apply_overrides` can change.
SECTIONS = ("data", "backbone", "model", "qp", "train", "baselines", "heads", "cluster")


def apply_overrides(profile: str | Profile, overrides: dict[str, Any] | None = None) -> Profile:
    """Apply flat dotted overrides such as ``{"train.ft_l1_fm": 0.0, "qp.n_selected": 40}`` to a profile.

    Numbers are converted to the type of the field they replace (so ``5`` and ``5.0`` give the same run), lists
    to tuples (values read back from JSON), and a mapping replaces fields of a
    field that is itself a dataclass (``{"cluster.train": {"gpus": 2}}``).

    Args:
        profile: a profile or its name.
        overrides: ``"<section>.<field>" -> value`` with section in :data:`SECTIONS`.

    Returns:
        The new (frozen) profile; its name is unchanged, so results stay in the same store.

    Raises:
        ValueError: for an unknown section or field (the message lists the valid ones) or a value of the
            wrong type.
    """
    prof = get_profile(profile)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"override {key!r} must be '<section>.<field>' with section in {', '.join(SECTIONS)}")
        part = getattr(prof, section)
        fields = {f.name: f for f in dataclasses.fields(part)}
        if name not in fields:
            raise ValueError(f"unknown field {key!r}; valid fields of {section}: {', '.join(fields)}")
        old = getattr(part, name)
        if isinstance(value, list):  # profiles hold tuples (frozen, hashable); JSON gives lists back
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if dataclasses.is_dataclass(old) and isinstance(value, dict):
            try:
                value, ok = dataclasses.replace(old, **value), True
            except TypeError:
                valid = ", ".join(f.name for f in dataclasses.fields(old))
                raise ValueError(f"override {key!r} takes a mapping of {valid}; got {value!r}") from None
        elif value is None:  # only where the field may be None (e.g. qp.time_limit, qp.rounds)
            ok = old is None or "None" in str(fields[name].type)
        elif isinstance(old, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(old, bool)
        elif isinstance(old, float) and isinstance(value, (int, float)):
            value, ok = float(value), True
        elif isinstance(old, (int, str, tuple)):
            ok = isinstance(value, type(old))
        else:
            ok = True
        if not ok:
            raise ValueError(f"override {key!r} expects {type(old).__name__} like {old!r}, got {value!r}")
        prof = dataclasses.replace(prof, **{section: dataclasses.replace(part, **{name: value})})
    return prof

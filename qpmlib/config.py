"""Configuration: profiles (one name picks every size of a run) and dotted overrides of them.

Three profiles exist:

* ``smoke``: tiny SynthBirds and a tiny random ViT; the whole book in a few minutes on 2 CPU cores (CI, nbval).
* ``demo`` (default): SynthBirds at 224 px and DINOv2 ViT-S/14 with registers (random weights when no
  pretrained weights are available locally; chapters show a banner then).
* ``paper``: CUB-200-2011 (and Stanford Cars) with DINOv2 ViT-B/14-reg and the hyperparameters that produced the
  paper's numbers (reference_spec §4.2, `qpm/dinov2.yaml`), 5 seeds; meant for a GPU and the real data.

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
    "StageResources",
    "ClusterConfig",
    "Profile",
    "PROFILES",
    "DEFAULT_PROFILE",
    "get_profile",
    "default_profile_name",
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


@dataclass(frozen=True)
class SweepConfig:
    """Grids for the ablation chapters (values are what each sweep tries)."""

    seeds: tuple[int, ...] = ()  # seeds of every sweep point; empty: the profile's seeds

    l1_fm: tuple[float, ...] = (0.0, 1.0, 5.0, 10.0)  # Fig. 9
    fdl: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # Fig. 11
    l1_fv: tuple[float, ...] = (0.0, 1.0, 5.0)  # Fig. 12
    n_layers: tuple[int, ...] = (0, 1, 2, 4)  # Fig. 7
    hidden_size: tuple[int, ...] = (512, 1024, 2048)  # Fig. 13
    n_features: tuple[int, ...] = (128, 256, 512)  # Fig. 13
    sparsity: tuple[tuple[int, int], ...] = ((40, 4), (50, 5), (60, 5))  # Fig. 8: (N*_f, N^c_f)
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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where missing runs are computed

    def replace(self, **changes) -> "Profile":
        """Return a copy with top-level fields replaced (use ``dataclasses.replace`` on parts)."""
        return dataclasses.replace(self, **changes)


SMOKE = Profile(
    name="smoke",
    description="tiny SynthBirds, tiny random ViT: the whole book in minutes on 2 CPU cores (CI, nbval)",
    data=DataConfig(dataset="synthbirds", image_size=112, n_classes=6, n_train=8, n_test=4, seed=0),
    backbone=BackboneConfig(name="tiny_vit_test", weights="random", batch_size=32),
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
        backbones=("tiny_vit_test",),
    ),
    baselines=BaselineConfig(reference_sizes=False, glm_n_lambdas=25, compact=None),
    seeds=(0,),
    # a smoke run is seconds on one core: CPU-only jobs, small enough for a laptop's one-node test cluster
    cluster=ClusterConfig(embed=StageResources(gpus=0, cpus=1, mem_gb=1.0, time_min=15),
                          train=StageResources(gpus=0, cpus=1, mem_gb=1.0, time_min=15), poll_s=2.0),
)

DEMO = Profile(
    name="demo",
    description="SynthBirds at 224 px with DINOv2 ViT-S/14-reg (random weights unless pretrained ones are local)",
    data=DataConfig(dataset="synthbirds", image_size=224, n_classes=25, n_train=24, n_test=16, seed=0),
    backbone=BackboneConfig(name="dinov2_vits14_reg", weights="auto", batch_size=32),
    model=ModelConfig(n_layers=4, hidden_size=128, n_features=64),
    qp=QPConfig(n_selected=20, n_per_class=5, time_limit=30.0),
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
        backbones=("dinov2_vits14", "dinov2_vits14_reg"),
    ),
    baselines=BaselineConfig(reference_sizes=False, glm_n_lambdas=25, compact=None),
    seeds=(0, 1, 2),
)

PAPER = Profile(
    name="paper",
    description="CUB-200-2011 + Stanford Cars with DINOv2 ViT-B/14-reg and the reference code's hyperparameters",
    data=DataConfig(dataset="cub", image_size=224),
    backbone=BackboneConfig(name="dinov2_vitb14_reg", weights="auto", batch_size=64),
    model=ModelConfig(n_layers=4, hidden_size=2048, n_features=512),
    qp=QPConfig(n_selected=50, n_per_class=5, time_limit=600.0),
    train=TrainConfig(),
    seeds=(0, 1, 2, 3, 4),
    extra_datasets=("cars",),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, DEMO, PAPER)}
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
SECTIONS = ("data", "backbone", "model", "qp", "train", "baselines", "cluster")


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

"""Frozen ViT backbones: DINOv2 (with and without registers), DINO v1, the project's own stand-in, a tiny test ViT.

:data:`BACKBONES` maps a name to a :class:`BackboneSpec`; :func:`build_backbone` turns a name into a
:class:`FrozenBackbone`, an ``nn.Module`` in eval mode without gradients whose ``forward`` returns the CLS token and
the patch tokens of the last block after the final LayerNorm, register tokens dropped (reference_spec §4.4).

Weights come from, in this order (``weights="auto"``):

1. an official checkpoint file (``dinov2_vits14_reg4_pretrain.pth`` style) in ``$QPMLIB_HOME/weights``,
   ``torch.hub.get_dir()/checkpoints`` or ``~/tmp/model_weights`` (where the reference code looks);
2. timm's Hugging Face repository (``timm/vit_small_patch14_reg4_dinov2.lvd142m`` ...) in the local HF cache;
3. a download of (2), unless ``HF_HUB_OFFLINE`` is set;
4. otherwise fixed random weights drawn from ``seed`` (timm's initialisation), with a logged warning.

The **stand-in** backbones (``standin_*``, :func:`standin_names`) are miniature DINOv2s that this project pretrains
itself on SynthBirds (:mod:`qpmlib.pretrain`, ``make weights``). Their weights are committed under
:data:`WEIGHTS_DIR` as ``<name>.safetensors`` beside a provenance card ``<name>.json``; ``weights="auto"`` loads that
file after checking its SHA-256 against the card, and never falls back to random weights.

Official checkpoints are converted to timm's parameter names. Their position embeddings cover a 37 x 37 grid
(518 px); they are interpolated to the target grid the way the reference code does it (bicubic, no antialias,
``scale_factor = (grid + 0.1) / 37``, reference_spec §4.4 and §10 row 15) or, with
``pos_embed_interpolation="hub"``, as the official hub does for register models (antialias, exact size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import paths
from .files import IntegrityError, atomic_write_json, file_sha256, read_json_object

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "POS_EMBED_INTERPOLATIONS",
    "FrozenBackbone",
    "build_backbone",
    "build_vit",
    "standin_names",
    "WEIGHTS_DIR",
    "read_card",
    "weights_id",
    "pretrained_available",
    "hub_offline",
    "convert_official_state_dict",
    "resample_pos_embed",
    "state_dict_sha256",
]

log = logging.getLogger(__name__)

POS_EMBED_INTERPOLATIONS = ("reference", "hub")
#: Where the stand-in backbones' weights and provenance cards are committed.
WEIGHTS_DIR = paths.REPO_ROOT / "weights"
REBUILD_COMMAND = "make weights"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Attributes:
        name: registry key.
        timm_name: timm architecture name (``None`` for the tiny test ViT, built from ``timm_kwargs``).
        pretrained_tag: timm pretrained tag (``"lvd142m"`` for DINOv2, ``"dino"`` for DINO v1), ``None`` if none.
        official_file: file name of the authors' release checkpoint, looked for in the local weight folders.
        embed_dim: token width D.
        patch_size: patch side in pixels.
        n_registers: register tokens (dropped from the output).
        timm_kwargs: extra keyword arguments for the timm constructor.
        bundled: the weights are the project's own, committed as ``WEIGHTS_DIR/<name>.safetensors`` with a card.
        pos_embed_interpolation: how position embeddings are resized to another grid by default (the stand-ins
            use ``"hub"``, the antialiased resize they were trained with at every crop size).
    """

    name: str
    timm_name: str | None
    pretrained_tag: str | None
    official_file: str | None
    embed_dim: int
    patch_size: int
    n_registers: int
    timm_kwargs: dict = field(default_factory=dict)
    bundled: bool = False
    pos_embed_interpolation: str = "reference"

    @property
    def weights_file(self) -> Path | None:
        """The committed weights of a stand-in (``None`` for other backbones)."""
        return WEIGHTS_DIR / f"{self.name}.safetensors" if self.bundled else None

    @property
    def hf_repo(self) -> str | None:
        """timm's Hugging Face repository for the pretrained weights (``None`` if there are none)."""
        if self.timm_name is None or self.pretrained_tag is None:
            return None
        return f"timm/{self.timm_name}.{self.pretrained_tag}"


def _dinov2_specs() -> dict[str, BackboneSpec]:
    sizes = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024), "g": ("giant", 1536)}
    specs = {}
    for letter, (size, dim) in sizes.items():
        for reg in (False, True):
            name = f"dinov2_vit{letter}14" + ("_reg" if reg else "")
            specs[name] = BackboneSpec(
                name=name,
                timm_name=f"vit_{size}_patch14_" + ("reg4_" if reg else "") + "dinov2",
                pretrained_tag="lvd142m",
                official_file=f"dinov2_vit{letter}14" + ("_reg4" if reg else "") + "_pretrain.pth",
                embed_dim=dim,
                patch_size=14,
                n_registers=4 if reg else 0,
            )
    return specs


def _standin_specs() -> dict[str, BackboneSpec]:
    """Miniature DINOv2s (patch 14, LayerScale, final norm; 4 registers or none) of two widths, same depth."""
    sizes = {"t": (96, 3), "s": (192, 3)}  # width, heads; depth 6 for both
    specs = {}
    for letter, (dim, heads) in sizes.items():
        for reg in (False, True):
            name = f"standin_{letter}14" + ("_reg" if reg else "")
            specs[name] = BackboneSpec(
                name=name,
                timm_name=None,
                pretrained_tag=None,
                official_file=None,
                embed_dim=dim,
                patch_size=14,
                n_registers=4 if reg else 0,
                timm_kwargs=dict(depth=6, num_heads=heads, mlp_ratio=4.0, init_values=1e-5,
                                 reg_tokens=4 if reg else 0, no_embed_class=True),
                bundled=True,
                pos_embed_interpolation="hub",
            )
    return specs


#: Registry of backbones by name (reference_spec §4.4; Table 4 compares several of them).
BACKBONES: dict[str, BackboneSpec] = {
    **_dinov2_specs(),
    **_standin_specs(),
    "dino_vitb16": BackboneSpec(
        name="dino_vitb16",
        timm_name="vit_base_patch16_224",
        pretrained_tag="dino",
        official_file="dino_vitbase16_pretrain.pth",
        embed_dim=768,
        patch_size=16,
        n_registers=0,
    ),
    # A tiny ViT for the smoke profile and the tests: random weights only, 4 registers so that the
    # register-dropping path is exercised.
    "tiny_vit_test": BackboneSpec(
        name="tiny_vit_test",
        timm_name=None,
        pretrained_tag=None,
        official_file=None,
        embed_dim=48,
        patch_size=14,
        n_registers=4,
        timm_kwargs=dict(depth=2, num_heads=3, mlp_ratio=4.0, init_values=1e-5, reg_tokens=4, no_embed_class=True),
    ),
}


class FrozenBackbone(nn.Module):
    """A frozen ViT that maps images to (CLS token, patch tokens) (reference_spec §4.4).

    It stays in eval mode (``train()`` is a no-op) and none of its parameters require gradients.

    Attributes:
        name: registry name.
        embed_dim: token width D.
        patch_size: patch side in pixels.
        image_size: input side S in pixels.
        grid: patches per side, ``image_size // patch_size``.
        n_patches: ``grid ** 2`` (256 at 224 px, patch 14).
        n_registers: register tokens in the model (dropped from the output).
        pretrained: whether the weights are pretrained (``False`` for random weights).
        weights_id: ``"sha256-<hex>"`` of the state dict (timm names, checkpoint resolution) or ``"random-seed<k>"``.
        source: where the weights came from (a path, ``"hf:<repo>"`` or ``"random"``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        patch_size: int,
        image_size: int,
        pretrained: bool,
        weights_id: str,
        source: str,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.embed_dim = int(model.embed_dim)
        self.patch_size = patch_size
        self.image_size = image_size
        self.grid = image_size // patch_size
        self.n_patches = self.grid**2
        self.n_registers = int(model.num_prefix_tokens) - 1
        self.pretrained = pretrained
        self.weights_id = weights_id
        self.source = source
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """Keep eval mode whatever ``mode`` says: the backbone is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of preprocessed images.

        Args:
            images: float tensor (B, 3, S, S) with S = ``image_size`` (see ``qpmlib.data.images.preprocess``).

        Returns:
            ``(cls, patches)``: (B, D) and (B, grid**2, D), the last block's tokens after the final LayerNorm,
            with the register tokens dropped (reference_spec §4.4).

        Raises:
            ValueError: when ``images`` does not have shape (B, 3, S, S).
        """
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.name} expects images of shape (B, 3, {s}, {s}); got {tuple(images.shape)}")
        tokens = self.model.forward_features(images)  # (B, 1 + n_reg + P, D), final norm applied
        return tokens[:, 0], tokens[:, self.model.num_prefix_tokens :]

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, image_size={self.image_size}, grid={self.grid}, embed_dim={self.embed_dim}, "
            f"n_registers={self.n_registers}, pretrained={self.pretrained}, weights_id={self.weights_id[:19]}"
        )


def resample_pos_embed(pos: torch.Tensor, grid: int, *, mode: str = "reference") -> torch.Tensor:
    """Interpolate patch position embeddings to a new square grid.

    Args:
        pos: (1, M*M, D) patch position embeddings (no prefix rows).
        grid: target patches per side.
        mode: ``"reference"`` (bicubic, antialias off, ``scale_factor=(grid + 0.1) / M``: the reference code's
            vendored DINOv2, reference_spec §4.4, §10 row 15) or ``"hub"`` (bicubic, antialias on, exact size).

    Returns:
        (1, grid*grid, D) tensor; ``pos`` itself when M equals ``grid`` (no interpolation, as in the reference).

    Raises:
        ValueError: for an unknown mode or a non-square ``pos``.
    """
    if mode not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"unknown pos_embed interpolation {mode!r}; valid: {', '.join(POS_EMBED_INTERPOLATIONS)}")
    n, dim = pos.shape[1], pos.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embedding has {n} patch rows, which is not a square grid")
    if m == grid:
        return pos
    img = pos.reshape(1, m, m, dim).permute(0, 3, 1, 2).float()  # (1, D, M, M)
    if mode == "reference":
        scale = (grid + 0.1) / m
        out = F.interpolate(img, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    else:
        out = F.interpolate(img, size=(grid, grid), mode="bicubic", antialias=True)
    if out.shape[-2:] != (grid, grid):
        raise ValueError(f"interpolated position grid is {tuple(out.shape[-2:])}, expected ({grid}, {grid})")
    return out.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official DINOv2 checkpoint's keys to timm's (position embeddings keep their resolution).

    Official layout: ``cls_token``, ``pos_embed`` (1, 1 + M*M, D), ``register_tokens`` (1, R, D) for ``_reg4``
    files, ``mask_token`` (dropped), ``blocks.N.mlp.w12/w3`` for the giant's SwiGLU. In timm's register models the
    position embedding does not cover the CLS token, so its row is folded into ``cls_token``. Files that are not in
    the official layout (timm, DINO v1) pass through unchanged.

    Args:
        state_dict: name -> tensor.

    Returns:
        A new dict with timm names.
    """
    sd = dict(state_dict)
    if "mask_token" not in sd and "register_tokens" not in sd:
        return sd
    sd.pop("mask_token", None)
    if "register_tokens" in sd:
        pos = sd.pop("pos_embed")
        sd["reg_token"] = sd.pop("register_tokens")
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        sd["pos_embed"] = pos[:, 1:]
    out = {}
    for k, v in sd.items():
        if ".mlp.w12." in k:
            k = k.replace(".mlp.w12.", ".mlp.fc1.")
        elif ".mlp.w3." in k:
            k = k.replace(".mlp.w3.", ".mlp.fc2.")
        out[k] = v
    return out


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """``"sha256-<hex>"`` over the sorted names, dtypes, shapes and raw bytes of a state dict."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256-" + h.hexdigest()


def _make_model(spec: BackboneSpec, image_size: int, **extra) -> nn.Module:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    common = dict(img_size=image_size, num_classes=0, **extra)
    if spec.timm_name is None:
        return VisionTransformer(patch_size=spec.patch_size, embed_dim=spec.embed_dim, **common, **spec.timm_kwargs)
    return timm.create_model(spec.timm_name, pretrained=False, **common, **spec.timm_kwargs)


def standin_names() -> list[str]:
    """Names of the project's own pretrained stand-in backbones."""
    return [name for name, spec in BACKBONES.items() if spec.bundled]


def build_vit(name: str, *, image_size: int = 224, dynamic_img_size: bool = False, seed: int = 0) -> nn.Module:
    """The bare, trainable timm ViT of a registry entry with random weights drawn from ``seed``.

    This is what :mod:`qpmlib.pretrain` trains (with ``dynamic_img_size=True``, so that one model takes crops of
    every size; its position embeddings cover ``image_size``) and what :func:`build_backbone` wraps.

    Raises:
        ValueError: for an unknown backbone name (lists the valid ones).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _make_model(BACKBONES[name], image_size, dynamic_img_size=dynamic_img_size)


def read_card(name: str) -> dict:
    """The provenance card of a stand-in backbone (``WEIGHTS_DIR/<name>.json``).

    Raises:
        ValueError: ``name`` is not a stand-in (lists the valid ones).
        FileNotFoundError: the card is missing (says how to rebuild it).
        IntegrityError: the card is not a JSON object.
    """
    if name not in BACKBONES or not BACKBONES[name].bundled:
        raise ValueError(f"{name!r} is not a stand-in backbone; valid stand-ins: {', '.join(standin_names())}")
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"the provenance card {path} is missing; rebuild the stand-in with "
                                f"`{REBUILD_COMMAND} VARIANTS={name}`")
    return read_json_object(path)


def _bundled_weights(spec: BackboneSpec) -> tuple[Path, str]:
    """The committed weights of a stand-in, after checking their SHA-256 against the provenance card."""
    path = spec.weights_file
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights of the stand-in backbone {spec.name} are missing: expected {path}. Rebuild them with "
            f"`{REBUILD_COMMAND} VARIANTS={spec.name}` (or `python data_scripts/pretrain_backbone.py --variant "
            f"{spec.name}`), or restore the committed file with `git checkout -- {_shown(path)}`"
        )
    expected = read_card(spec.name).get("sha256")
    actual = file_sha256(path)
    if actual != expected:
        raise IntegrityError(path, (
            f"does not match its provenance card: its SHA-256 is {actual}, the card "
            f"{path.with_suffix('.json').name} records {expected}. Restore both files from git, or rebuild them "
            f"with `{REBUILD_COMMAND} VARIANTS={spec.name}`"
        ))
    return path, _shown(path)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (as cards and messages show it), else absolute."""
    try:
        return str(path.relative_to(paths.REPO_ROOT))
    except ValueError:
        return str(path)


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], grid: int, interp: str, origin: str) -> None:
    sd = convert_official_state_dict(sd)
    if "pos_embed" in sd:
        n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        pos = sd["pos_embed"]
        sd["pos_embed"] = torch.cat([pos[:, :n_prefix], resample_pos_embed(pos[:, n_prefix:], grid, mode=interp)], 1)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]
    problems = [(label, keys) for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:20]) + (f" ... and {len(keys) - 20} more" if len(keys) > 20 else "")

        parts = [f"{label} ({len(keys)}): {show(keys)}" for label, keys in problems]
        raise ValueError(f"checkpoint {origin} does not fit the architecture; " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def hub_offline() -> bool:
    """Whether downloads from the Hugging Face hub are off (``HF_HUB_OFFLINE``, or no ``huggingface_hub``)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def _local_weights(spec: BackboneSpec) -> tuple[Path, str] | None:
    """Pretrained weights already on this machine: an official file, or timm's file in the Hugging Face cache."""
    if spec.official_file:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        for folder in (paths.home() / "weights", hub, Path.home() / "tmp" / "model_weights"):
            if (folder / spec.official_file).is_file():
                return folder / spec.official_file, str(folder / spec.official_file)
    if spec.hf_repo is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(spec.hf_repo, "model.safetensors")
    return (Path(cached), f"hf:{spec.hf_repo}") if isinstance(cached, str) else None


def _find_pretrained(spec: BackboneSpec) -> tuple[Path, str] | None:
    """Locate pretrained weights without touching the network unless downloads are allowed."""
    local = _local_weights(spec)
    if local is not None or spec.hf_repo is None or hub_offline():
        return local
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec.hf_repo, "model.safetensors")), f"hf:{spec.hf_repo}"
    except Exception as exc:  # network errors of every kind fall back to random weights
        log.warning("could not download %s: %s", spec.hf_repo, exc)
        return None


def pretrained_available(name: str, weights: str | Path = "auto") -> bool:
    """Whether :func:`build_backbone` with these arguments would load pretrained weights found on this machine.

    Only local files and the local Hugging Face cache are consulted; nothing is downloaded.

    Raises:
        ValueError: for an unknown backbone name (lists the valid ones).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    if str(weights) == "random":
        return False
    if str(weights) not in ("auto", "pretrained"):
        return Path(weights).is_file()
    spec = BACKBONES[name]
    if spec.bundled:
        return spec.weights_file.is_file()
    return _local_weights(spec) is not None


def _resolve_weights(name: str, weights: str) -> tuple[Path, str] | None:
    """The checkpoint (path, source) that ``weights`` selects for backbone ``name``, or None for random weights."""
    spec = BACKBONES[name]
    if weights in ("auto", "pretrained") and spec.bundled:
        return _bundled_weights(spec)
    if weights in ("auto", "pretrained"):
        found = _find_pretrained(spec)
        if found is None and weights == "pretrained":
            raise ValueError(
                f"no pretrained weights found for {name}: put {spec.official_file or 'a checkpoint'} into "
                f"{paths.home() / 'weights'}, or allow a download of {spec.hf_repo} (unset HF_HUB_OFFLINE)"
            )
        return found
    if weights == "random":
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights {weights!r} is neither 'auto', 'pretrained', 'random' nor an existing checkpoint file"
        )
    return path, str(path)


_WEIGHTS_IDS_FILE = ".weights_ids.json"  # in paths.cache_dir(): checkpoint path -> (size, mtime, inode, ctime, id)


def weights_id(name: str, weights: str | Path = "auto", *, seed: int = 0) -> str:
    """The ``weights_id`` that :func:`build_backbone` with these arguments gives, without building the model.

    Random weights give ``"random-seed<seed>"`` at once. A checkpoint's id (the SHA-256 of its state dict, see
    :func:`state_dict_sha256`) is computed once and remembered in ``<cache_dir>/.weights_ids.json`` with the file's
    size, mtime, inode and ctime, so that planning a grid of runs reads no checkpoint twice.

    Raises:
        ValueError: unknown backbone, or ``weights="pretrained"`` when none are available.
        FileNotFoundError: ``weights`` looks like a path that does not exist.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    found = _resolve_weights(name, str(weights))
    if found is None:
        return f"random-seed{seed}"
    path = found[0].resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    cache = paths.cache_dir() / _WEIGHTS_IDS_FILE
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(path)) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("id"), str):
        return entry["id"]
    wid = state_dict_sha256(convert_official_state_dict(_read_checkpoint(path)))
    known = known if isinstance(known, dict) else {}
    known[str(path)] = {"stat": stamp, "id": wid}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)  # a fresh home has no cache folder yet
        atomic_write_json(cache, known, indent=1)
    except OSError as exc:  # a read-only cache only costs the hash next time
        log.warning("could not remember the weights id in %s: %s", cache, exc)
    return wid


def build_backbone(
    name: str,
    *,
    weights: str | Path = "auto",
    image_size: int = 224,
    seed: int = 0,
    pos_embed_interpolation: str | None = None,
) -> FrozenBackbone:
    """Build a frozen backbone by registry name (reference_spec §4.4).

    Args:
        name: key of :data:`BACKBONES`.
        weights: ``"auto"`` (pretrained if found locally or downloadable, else random with a warning; for a
            stand-in, its committed file), ``"pretrained"`` (like auto, but an error when none are found),
            ``"random"`` (fixed random weights from ``seed``), or the path of a checkpoint (official DINOv2/DINO
            layout or timm names; ``.pth``/``.pt``/``.safetensors``).
        image_size: input side S in pixels; the grid is ``S // patch_size`` (224 px, patch 14 -> 16 x 16).
        seed: seed of the random weights.
        pos_embed_interpolation: ``"reference"`` or ``"hub"``, see :func:`resample_pos_embed`; None: the
            registry entry's default (``"reference"`` for DINOv2 and DINO, ``"hub"`` for the stand-ins).

    Returns:
        A :class:`FrozenBackbone` on the CPU, in eval mode, without gradients.

    Raises:
        ValueError: unknown name (lists the valid ones), bad ``image_size``, a checkpoint that does not fit
            (names the missing/unexpected keys), ``weights="pretrained"`` when none are available, or a stand-in
            whose weights file does not match the SHA-256 of its card (names both).
        FileNotFoundError: ``weights`` looks like a path that does not exist, or a stand-in's committed weights
            are missing (says how to rebuild them).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if pos_embed_interpolation is None:
        pos_embed_interpolation = spec.pos_embed_interpolation
    if pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(
            f"unknown pos_embed_interpolation {pos_embed_interpolation!r}; valid: {', '.join(POS_EMBED_INTERPOLATIONS)}"
        )
    if image_size < spec.patch_size:
        raise ValueError(f"image_size must be at least the patch size {spec.patch_size}; got {image_size}")
    grid = image_size // spec.patch_size

    weights = str(weights)
    found = _resolve_weights(name, weights)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _make_model(spec, image_size)
    if found is None:
        if weights == "auto" and (spec.official_file or spec.hf_repo):
            log.warning(
                "no pretrained weights for %s found locally%s: using fixed random weights (seed %d)",
                name, "" if spec.hf_repo is None else f" or in the HF cache ({spec.hf_repo})", seed,
            )
        weights_id, source, pretrained = f"random-seed{seed}", "random", False
    else:
        path, source = found
        sd = _read_checkpoint(path)
        weights_id = state_dict_sha256(convert_official_state_dict(sd))
        _load_into(model, sd, grid, pos_embed_interpolation, source)
        pretrained = True
    return FrozenBackbone(
        model,
        name=name,
        patch_size=spec.patch_size,
        image_size=image_size,
        pretrained=pretrained,
        weights_id=weights_id,
        source=source,
    )

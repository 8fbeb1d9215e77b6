"""Tests for qpmlib.backbones: registry, frozen forward, official-checkpoint loading, offline fallback."""

import dataclasses
import json
import logging
import math
import time

import pytest
import torch
import torch.nn.functional as F

from qpmlib import backbones
from qpmlib.backbones import (
    BACKBONES,
    build_backbone,
    convert_official_state_dict,
    resample_pos_embed,
)
from qpmlib.files import IntegrityError, file_sha256

torch.set_num_threads(1)
TINY = BACKBONES["tiny_vit_test"]
DEPTH, HEADS = TINY.timm_kwargs["depth"], TINY.timm_kwargs["num_heads"]


def official_tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for tiny_vit_test in the official DINOv2 key layout (37 x 37 position grid, 4 registers)."""
    g = torch.Generator().manual_seed(seed)
    d, p = TINY.embed_dim, TINY.patch_size

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + 37 * 37, d),
        "register_tokens": r(1, 4, d),
        "mask_token": r(1, d),
        "patch_embed.proj.weight": r(d, 3, p, p, scale=0.05),
        "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d),
            b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d),
            b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
            b + "ls1.gamma": r(d, scale=1.0),
            b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d),
            b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
            b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d),
            b + "ls2.gamma": r(d, scale=1.0),
        })
    return sd


def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2's forward written out from the official weights (reference_spec §4.4), for comparison."""
    bsz, d = x.shape[0], sd["cls_token"].shape[-1]
    grid = x.shape[-1] // TINY.patch_size
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=TINY.patch_size)
    t = torch.cat([sd["cls_token"].expand(bsz, -1, -1), t.flatten(2).transpose(1, 2)], 1)
    pos = sd["pos_embed"]
    patch_pos = pos[:, 1:].reshape(1, 37, 37, d).permute(0, 3, 1, 2)
    s = (grid + 0.1) / 37
    patch_pos = F.interpolate(patch_pos, scale_factor=(s, s), mode="bicubic", antialias=False)
    t = t + torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], 1)
    t = torch.cat([t[:, :1], sd["register_tokens"].expand(bsz, -1, -1), t[:, 1:]], 1)
    hd = d // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(
            bsz, -1, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        a = a.transpose(1, 2).reshape(bsz, -1, d)
        t = t + sd[b + "ls1.gamma"] * F.linear(a, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        t = t + sd[b + "ls2.gamma"] * h
    t = F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return t[:, 0], t[:, 5:]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="dinov2_vitb14_reg.*tiny_vit_test"):
        build_backbone("dinov3_vitb16")


def test_registry_covers_the_paper_backbones():
    for letter, dim in zip("sblg", (384, 768, 1024, 1536)):
        assert BACKBONES[f"dinov2_vit{letter}14"].n_registers == 0
        assert BACKBONES[f"dinov2_vit{letter}14_reg"].n_registers == 4
        assert BACKBONES[f"dinov2_vit{letter}14_reg"].embed_dim == dim
    assert BACKBONES["dinov2_vitb14_reg"].official_file == "dinov2_vitb14_reg4_pretrain.pth"
    assert BACKBONES["dino_vitb16"].patch_size == 16


def test_tiny_forward_shapes_frozen_and_registers_dropped():
    bb = build_backbone("tiny_vit_test", weights="random", image_size=112)
    assert (bb.grid, bb.n_patches, bb.n_registers, bb.embed_dim) == (8, 64, 4, 48)
    assert not bb.pretrained and bb.weights_id == "random-seed0"
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not bb.model.training
    x = torch.rand(2, 3, 112, 112)
    cls, patches = bb(x)
    assert cls.shape == (2, 48) and patches.shape == (2, 64, 48)
    tokens = bb.model.forward_features(x)  # (2, 1 + 4 + 64, 48)
    assert tokens.shape[1] == 69
    torch.testing.assert_close(patches, tokens[:, 5:])
    torch.testing.assert_close(cls, tokens[:, 0])
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        bb(torch.rand(2, 3, 56, 56))


def test_random_weights_are_fixed_by_seed():
    x = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    a = build_backbone("tiny_vit_test", weights="random", image_size=56, seed=3)
    b = build_backbone("tiny_vit_test", weights="random", image_size=56, seed=3)
    c = build_backbone("tiny_vit_test", weights="random", image_size=56, seed=4)
    assert a.weights_id == "random-seed3"
    torch.testing.assert_close(a(x)[1], b(x)[1], rtol=0, atol=0)
    assert not torch.allclose(a(x)[1], c(x)[1])


@pytest.mark.parametrize(
    "name, patches, dim, regs", [("dinov2_vits14_reg", 256, 384, 4), ("dinov2_vits14", 256, 384, 0)]
)
def test_dinov2_small_at_224_gives_256_patches(name, patches, dim, regs):
    bb = build_backbone(name, weights="random", image_size=224)
    assert (bb.n_patches, bb.embed_dim, bb.n_registers, bb.patch_size) == (patches, dim, regs, 14)
    cls, tok = bb(torch.rand(1, 3, 224, 224))
    assert tok.shape == (1, patches, dim) and cls.shape == (1, dim)


def test_official_checkpoint_loads_and_matches_reference_forward(tmp_path):
    sd = official_tiny_state_dict()
    path = tmp_path / "tiny_pretrain.pth"
    torch.save(sd, path)
    bb = build_backbone("tiny_vit_test", weights=path, image_size=56)
    assert bb.pretrained and bb.weights_id.startswith("sha256-") and bb.source == str(path)
    x = torch.rand(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    cls, patches = bb(x)
    ref_cls, ref_patches = official_forward(sd, x)
    assert patches.shape == (3, 16, 48)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patches, ref_patches, rtol=1e-4, atol=1e-5)
    # the same weights in timm's names give the same id and the same outputs
    timm_path = tmp_path / "tiny_timm.pth"
    torch.save(convert_official_state_dict(sd), timm_path)
    bb2 = build_backbone("tiny_vit_test", weights=timm_path, image_size=56)
    assert bb2.weights_id == bb.weights_id
    torch.testing.assert_close(bb2(x)[1], patches)


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    sd = official_tiny_state_dict()
    del sd["blocks.1.ls2.gamma"]
    sd["blocks.7.attn.qkv.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    expected = r"missing keys \(1\): blocks\.1\.ls2\.gamma.*unexpected keys \(1\): blocks\.7"
    with pytest.raises(ValueError, match=expected):
        build_backbone("tiny_vit_test", weights=tmp_path / "bad.pth", image_size=56)
    sd = official_tiny_state_dict()
    sd["norm.weight"] = torch.ones(5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): norm\.weight \(5,\) vs \(48,\)"):
        build_backbone("tiny_vit_test", weights=tmp_path / "bad.pth", image_size=56)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("tiny_vit_test", weights=tmp_path / "nope.pth")


def test_convert_official_renames_swiglu_and_folds_cls_position():
    sd = {"cls_token": torch.ones(1, 1, 2), "pos_embed": torch.arange(6.0).reshape(1, 3, 2),
          "register_tokens": torch.zeros(1, 4, 2), "mask_token": torch.zeros(1, 2),
          "blocks.0.mlp.w12.weight": torch.zeros(8, 2), "blocks.0.mlp.w3.bias": torch.zeros(2)}
    out = convert_official_state_dict(sd)
    assert set(out) == {"cls_token", "pos_embed", "reg_token", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias"}
    torch.testing.assert_close(out["cls_token"], torch.tensor([[[1.0, 2.0]]]))
    torch.testing.assert_close(out["pos_embed"], torch.arange(2.0, 6.0).reshape(1, 2, 2))


def test_resample_pos_embed():
    pos = torch.randn(1, 37 * 37, 5, generator=torch.Generator().manual_seed(0))
    assert resample_pos_embed(pos, 37) is pos  # same grid: untouched, as in the reference
    const = torch.full((1, 37 * 37, 5), 0.7)
    for mode in ("reference", "hub"):
        out = resample_pos_embed(const, 16, mode=mode)
        assert out.shape == (1, 256, 5)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))
    assert not torch.allclose(resample_pos_embed(pos, 16), resample_pos_embed(pos, 16, mode="hub"))
    with pytest.raises(ValueError, match="reference, hub"):
        resample_pos_embed(pos, 16, mode="nearest")


def test_auto_without_weights_falls_back_fast_and_offline(monkeypatch, tmp_path, caplog):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)

    def no_network(*a, **k):
        raise AssertionError("a download was attempted while HF_HUB_OFFLINE=1")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    t0 = time.perf_counter()
    assert backbones._find_pretrained(BACKBONES["dinov2_vits14_reg"]) is None
    assert time.perf_counter() - t0 < 1.0
    with caplog.at_level(logging.WARNING, logger="qpmlib.backbones"):
        bb = build_backbone("dinov2_vits14_reg", weights="auto", image_size=28)
    assert not bb.pretrained and bb.weights_id == "random-seed0"
    assert "random weights" in caplog.text
    with pytest.raises(ValueError, match="dinov2_vits14_reg4_pretrain.pth"):
        build_backbone("dinov2_vits14_reg", weights="pretrained", image_size=28)


def test_auto_finds_official_file_in_home_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    monkeypatch.setitem(BACKBONES, "tiny_vit_test", dataclasses.replace(TINY, official_file="tiny_pretrain.pth"))
    (tmp_path / "weights").mkdir()
    torch.save(official_tiny_state_dict(seed=5), tmp_path / "weights" / "tiny_pretrain.pth")
    bb = build_backbone("tiny_vit_test", weights="auto", image_size=56)
    assert bb.pretrained and bb.source.endswith("tiny_pretrain.pth")


def test_timm_layout_safetensors_at_518_px_is_resampled(tmp_path):
    from safetensors.torch import save_file

    source = build_backbone("tiny_vit_test", weights="random", image_size=518, seed=7)  # 37 x 37 grid
    sd = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(sd, tmp_path / "model.safetensors")
    same = build_backbone("tiny_vit_test", weights=tmp_path / "model.safetensors", image_size=518)
    x = torch.rand(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same(x)[1], source(x)[1], rtol=0, atol=0)
    small = build_backbone("tiny_vit_test", weights=tmp_path / "model.safetensors", image_size=56)
    torch.testing.assert_close(small.model.pos_embed, resample_pos_embed(sd["pos_embed"], 4))
    torch.testing.assert_close(small.model.reg_token, sd["reg_token"])
    assert small.weights_id == same.weights_id


def test_pretrained_available_reflects_local_files(tmp_path, monkeypatch):
    from qpmlib.backbones import BACKBONES, pretrained_available

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = BACKBONES["dinov2_vits14_reg"]
    assert not pretrained_available("tiny_vit_test", "auto")
    assert not pretrained_available("dinov2_vits14_reg", "random")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / spec.official_file).write_bytes(b"x")
    assert pretrained_available("dinov2_vits14_reg", "auto")
    assert pretrained_available("dinov2_vits14_reg", tmp_path / "weights" / spec.official_file)
    assert not pretrained_available("dinov2_vits14_reg", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="valid backbones"):
        pretrained_available("vit_huge")


# --- the project's own stand-in backbones --------------------------------------------------------------------------


def test_standin_registry_has_both_axes():
    names = backbones.standin_names()
    assert set(names) == {"standin_t14", "standin_t14_reg", "standin_s14", "standin_s14_reg"}
    for name in names:
        spec = BACKBONES[name]
        assert spec.bundled and spec.patch_size == 14 and spec.timm_kwargs["no_embed_class"]
        assert spec.n_registers == (4 if name.endswith("_reg") else 0) == spec.timm_kwargs["reg_tokens"]
        assert spec.weights_file == backbones.WEIGHTS_DIR / f"{name}.safetensors"
    assert BACKBONES["standin_s14_reg"].embed_dim == 2 * BACKBONES["standin_t14_reg"].embed_dim
    bb = build_backbone("standin_s14_reg", weights="random", image_size=224)
    assert (bb.n_patches, bb.n_registers, bb.pretrained) == (256, 4, False)


def _fake_standin(folder, name="standin_t14_reg", seed=0):
    """Write random weights of a stand-in and a card with their SHA-256 into ``folder``."""
    from safetensors.torch import save_file

    vit = backbones.build_vit(name, image_size=224, seed=seed)
    path = folder / f"{name}.safetensors"
    save_file({k: v.half().contiguous() for k, v in vit.state_dict().items()}, path)
    (folder / f"{name}.json").write_text(f'{{"sha256": "{file_sha256(path)}"}}')
    return vit, path


def test_extraction_backbone_is_rebuilt_when_its_weights_file_changes(tmp_path, monkeypatch):
    from qpmlib import embeddings

    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    _fake_standin(tmp_path, seed=0)
    first = embeddings._profile_backbone("standin_t14_reg", "auto", 56)
    assert embeddings._profile_backbone("standin_t14_reg", "auto", 56) is first  # built once per checkpoint
    _fake_standin(tmp_path, seed=1)  # e.g. `make weights` rebuilt it: the cached model must not be served
    second = embeddings._profile_backbone("standin_t14_reg", "auto", 56)
    assert second.weights_id != first.weights_id
    assert second.weights_id == backbones.weights_id("standin_t14_reg", "auto")


def test_a_checkpoints_weights_id_is_remembered_in_a_fresh_home(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))  # no cache folder yet
    (tmp_path / "weights").mkdir()
    _fake_standin(tmp_path / "weights", seed=0)
    wid = backbones.weights_id("standin_t14_reg", "auto")
    remembered = json.loads((tmp_path / "home" / "cache" / ".weights_ids.json").read_text())
    assert [entry["id"] for entry in remembered.values()] == [wid]
    monkeypatch.setattr(backbones, "state_dict_sha256", lambda *a: pytest.fail("the id was hashed again"))
    assert backbones.weights_id("standin_t14_reg", "auto") == wid


def test_standin_weights_load_after_the_hash_check(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    vit, path = _fake_standin(tmp_path)
    assert backbones.pretrained_available("standin_t14_reg")
    bb = build_backbone("standin_t14_reg", image_size=224)
    assert bb.pretrained and bb.source.endswith("standin_t14_reg.safetensors")
    torch.testing.assert_close(bb.model.pos_embed, vit.pos_embed.half().float())
    small = build_backbone("standin_t14_reg", image_size=112)  # the trained resize: antialiased ("hub")
    expected = resample_pos_embed(vit.pos_embed.half().float(), 8, mode="hub")
    torch.testing.assert_close(small.model.pos_embed, expected)


def test_standin_weights_that_do_not_match_the_card_name_both_hashes(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    _, path = _fake_standin(tmp_path)
    recorded = backbones.read_card("standin_t14_reg")["sha256"]
    path.write_bytes(path.read_bytes()[:-2] + b"\x00\x01")
    actual = file_sha256(path)
    with pytest.raises(IntegrityError, match=f"SHA-256 is {actual}.*records {recorded}"):
        build_backbone("standin_t14_reg", image_size=56)


def test_missing_standin_weights_say_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    assert not backbones.pretrained_available("standin_s14_reg")
    with pytest.raises(FileNotFoundError, match="make weights VARIANTS=standin_s14_reg"):
        build_backbone("standin_s14_reg", image_size=56)
    with pytest.raises(ValueError, match="valid stand-ins: standin_t14"):
        backbones.read_card("dinov2_vits14")
    assert not build_backbone("standin_s14_reg", weights="random", image_size=56).pretrained


@pytest.mark.parametrize("name", ["standin_t14", "standin_t14_reg", "standin_s14", "standin_s14_reg"])
def test_committed_standin_matches_its_card(name):
    card = backbones.read_card(name)
    assert file_sha256(BACKBONES[name].weights_file) == card["sha256"]
    assert card["architecture"]["embed_dim"] == BACKBONES[name].embed_dim
    bb = build_backbone(name, image_size=224)
    assert bb.pretrained and bb.n_registers == BACKBONES[name].n_registers


def test_committed_weights_fit_the_size_budget():
    total = sum(BACKBONES[n].weights_file.stat().st_size for n in backbones.standin_names())
    assert total <= 32 * 2**20

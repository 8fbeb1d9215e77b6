"""Tests for qpmlib.heads.protofm and qpmlib.heads.views: views, RoIAlign, the losses, training."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from heads_fixtures import one_thread, planted  # noqa: F401 (one_thread is autouse)
from qpmlib.heads.base import evaluate_head
from qpmlib.heads.protofm import (
    ProtoFM,
    ProtoFMConfig,
    alignment_loss,
    assignment_loss,
    patch_contrastive_loss,
    train_protofm,
)
from qpmlib.heads.views import (
    ViewConfig,
    ViewTokens,
    crop_and_resize,
    embed_views,
    sample_views,
    token_views,
)

CFG = ProtoFMConfig(n_prototypes=16, proj_dim=16, hidden_dim=32, epochs=25, batch_size=16, warmup_epochs=3,
                    lr=1e-2, contrast_samples=64, align_tokens=8, device="cpu")


@pytest.fixture(scope="module")
def data():
    return planted()


# ------------------------------------------------------------------------------------------------ views
def test_views_are_seeded_per_image_and_lie_inside_the_image():
    cfg = ViewConfig(n_views=3, scale=(0.3, 0.6), seed=4)
    boxes, flips = sample_views([7, 3, 11], cfg)
    again, again_flips = sample_views([11, 7], cfg)
    assert np.array_equal(again, boxes[[2, 0]]) and np.array_equal(again_flips, flips[[2, 0]])
    assert boxes.shape == (3, 3, 4) and flips.shape == (3, 3)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    assert (area >= 0.3 - 1e-6).all() and (area <= 0.6 + 1e-6).all()
    assert not np.array_equal(sample_views([7], dataclasses.replace(cfg, seed=5))[0], boxes[:1])
    with pytest.raises(ValueError, match="scale"):
        ViewConfig(scale=(0.5, 1.5))


def test_crop_and_resize_samples_bin_centres_bilinearly_and_flips():
    g = 8
    ramp = torch.arange(g, dtype=torch.float64).repeat(g, 1)[None, None]  # value = column index
    full = crop_and_resize(ramp, torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64), torch.tensor([False]))
    assert torch.allclose(full, ramp)  # the whole image at its own size is the identity
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]], dtype=torch.float64)  # map units 2..6
    out = crop_and_resize(ramp, box, torch.tensor([False]))
    centres = 2 + (torch.arange(g, dtype=torch.float64) + 0.5) * 4 / g  # bin centres in map units
    assert torch.allclose(out[0, 0, 0], centres - 0.5)  # pixel j's centre is at j + 0.5
    flipped = crop_and_resize(ramp, box, torch.tensor([True]))
    assert torch.allclose(flipped, out.flip(-1))


def test_token_views_and_embed_views_shapes():
    x = torch.randn(2, 16, 5)
    boxes, flips = sample_views([1, 2])
    v = token_views(x, torch.as_tensor(boxes[:, 0]), torch.as_tensor(flips[:, 0]))
    assert v.shape == x.shape
    full = token_views(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), torch.tensor([False, False]))
    assert torch.allclose(full, x, atol=1e-6)

    def backbone(images):  # (B, 3, 8, 8) -> CLS (B, 3), 4 patch tokens (B, 4, 3)
        patches = images.unfold(2, 4, 4).unfold(3, 4, 4).mean(dim=(-1, -2)).flatten(2).transpose(1, 2)
        return patches.mean(1), patches

    cls, patches = embed_views(backbone, torch.randn(2, 3, 8, 8), boxes, flips)
    assert cls.shape == (2, 2, 3) and patches.shape == (2, 2, 4, 3)


def test_roialign_between_views_aligns_a_view_with_its_region():
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(3, 5, 8, 8), dim=1)  # assignment maps on the original image
    boxes, flips = sample_views([1, 2, 3], ViewConfig(n_views=1, flip=0.5, seed=1))
    box, flip = torch.as_tensor(boxes[:, 0]), torch.as_tensor(flips[:, 0])
    teacher = crop_and_resize(student, box, flip)  # a teacher that sees exactly the view's region
    aligned = crop_and_resize(student, box, flip)
    entropy = -(teacher * teacher.log()).sum(1).mean()
    assert assignment_loss(aligned, teacher).item() == pytest.approx(entropy.item(), rel=1e-6)  # the minimum
    moved = crop_and_resize(student, torch.roll(box, 1, dims=0), flip)  # another image's box
    assert assignment_loss(moved, teacher).item() > entropy.item() + 0.05


# ------------------------------------------------------------------------------------------------ losses
def test_assignment_loss_of_uniform_maps_is_log_k():
    maps = torch.full((2, 4, 3, 3), 0.25)
    assert assignment_loss(maps, maps).item() == pytest.approx(math.log(4))


def test_patch_contrastive_loss_limits():
    same = torch.ones(1, 4, 3, 3)  # 9 identical embeddings: every location is as likely as the positive
    assert patch_contrastive_loss(same, same, temperature=0.1, n_samples=100).item() == pytest.approx(math.log(9))
    distinct = torch.eye(9).reshape(9, 3, 3)[None]  # 9 orthogonal embeddings
    assert patch_contrastive_loss(distinct, distinct, temperature=0.01, n_samples=100).item() < 1e-6
    g = torch.Generator().manual_seed(0)
    assert patch_contrastive_loss(same, same, temperature=0.1, n_samples=4, generator=g).item() == \
        pytest.approx(math.log(4))  # a subset of 4 locations


def test_alignment_loss_closed_form():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two orthogonal tokens: centred F = +-0.5
    together = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # both on one prototype: C = 1 everywhere
    apart = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # on different prototypes: C = I
    assert alignment_loss(tokens, together).item() == pytest.approx(0.0)
    assert alignment_loss(tokens, apart).item() == pytest.approx(-0.25)
    assert alignment_loss(tokens, apart, shift=0.1).item() == pytest.approx(-(0.4 + 0.4) / 4)


# ------------------------------------------------------------------------------------------------ training
def test_learns_the_planted_classes_with_token_grid_views(data, tmp_path):
    run = train_protofm(data.train, CFG, seed=0, eval_data=data.test, verbose=False)
    ev = evaluate_head(run.model, data.test, CFG)
    assert np.mean(ev.predictions == ev.labels) >= 0.8  # chance is 0.25
    assert {"ce", "assign", "contrast", "align", "sparsity"} <= set(run.history.epochs[0])
    assert (run.model.classifier >= 0).all()
    # the teacher is an EMA of the student, not a frozen copy of its initialisation
    assert not torch.equal(run.model.teacher.prototypes, run.model.student.prototypes)
    d, h, e, k, c = 16, 32, 16, 16, 4
    assert run.n_parameters == d * h + h + h * e + e + k * e + c * k  # the teacher does not count
    torch.save(run.model.state_dict(), tmp_path / "head.pt")
    again = ProtoFM.from_config(run.config, d, c)
    again.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    assert np.array_equal(evaluate_head(again, data.test, CFG).logits, ev.logits)


def test_trains_from_cached_views_and_checks_them(data):
    boxes, flips = sample_views(data.train.image_ids, ViewConfig(n_views=2))
    x = torch.as_tensor(data.train.patches)
    view_patches = torch.stack([token_views(x, torch.as_tensor(boxes[:, v]), torch.as_tensor(flips[:, v]))
                                for v in range(2)], dim=1).numpy().astype(np.float16)
    views = ViewTokens(view_patches, boxes, flips)
    run = train_protofm(data.train, dataclasses.replace(CFG, epochs=2), seed=0, views=views, verbose=False)
    assert len(run.history.epochs) == 2
    with pytest.raises(ValueError, match="views hold"):
        train_protofm(data.train, CFG, seed=0, views=ViewTokens(view_patches[:5], boxes[:5], flips[:5]))
    with pytest.raises(ValueError, match="disagree"):
        ViewTokens(view_patches, boxes, flips[:, :1])


def test_protofm_budget_and_config_are_checked_before_training(data):
    with pytest.raises(ValueError, match="257 prototypes"):
        train_protofm(data.train, dataclasses.replace(CFG, n_prototypes=257), seed=0, verbose=False)
    with pytest.raises(ValueError, match="ema"):
        train_protofm(data.train, dataclasses.replace(CFG, ema=1.0), seed=0, verbose=False)

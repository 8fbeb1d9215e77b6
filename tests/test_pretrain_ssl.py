"""Tests for qpmlib.pretrain.ssl: DINO, iBOT and KoLeo losses in closed form, centring, block masks, EMA."""

import math

import numpy as np
import pytest
import torch

from qpmlib.pretrain import ssl


def test_projection_head_scores_are_cosines():
    torch.manual_seed(0)
    head = ssl.ProjectionHead(8, n_prototypes=5, hidden=16, bottleneck=4)
    out = head(torch.randn(3, 7, 8))
    assert out.shape == (3, 7, 5)
    assert out.abs().max() <= 1 + 1e-6
    z = torch.nn.functional.normalize(head.mlp(torch.ones(1, 8)), dim=-1)
    p = torch.nn.functional.normalize(head.prototypes, dim=-1)
    torch.testing.assert_close(head(torch.ones(1, 8)), z @ p.T)


def test_teacher_probabilities_centre_and_sharpen():
    scores = torch.tensor([[1.0, 0.0, 0.0]])
    centre = torch.tensor([0.5, 0.0, 0.0])
    p = ssl.teacher_probabilities(scores, centre, 0.5)
    expected = torch.softmax(torch.tensor([[1.0, 0.0, 0.0]]), -1)  # (1 - 0.5) / 0.5 = 1
    torch.testing.assert_close(p, expected)
    sharp = ssl.teacher_probabilities(scores, torch.zeros(3), 0.01)
    assert sharp[0, 0] > 0.999


def test_update_centre_is_an_ema_of_the_batch_mean():
    centre = torch.tensor([1.0, 2.0])
    ssl.update_centre(centre, torch.tensor([[3.0, 0.0], [5.0, 4.0]]), momentum=0.75)
    torch.testing.assert_close(centre, torch.tensor([0.75 * 1 + 0.25 * 4, 0.75 * 2 + 0.25 * 2]))


def test_dino_loss_closed_form_skips_same_crop_pairs():
    # B = 1, K = 2, V = 3 crops (2 global + 1 local); one-hot teachers make the cross-entropy a single log-prob.
    student = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[0.0, math.log(3.0)]]])  # (3, 1, 2)
    teacher = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (2, 1, 2)
    loss = ssl.dino_loss(student, teacher, temperature=1.0)
    # pairs (teacher 0 -> student 1, 2) and (teacher 1 -> student 0, 2)
    expected = -(math.log(3 / 4) + math.log(1 / 4) + math.log(1 / 2) + math.log(3 / 4)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_is_smallest_when_the_student_matches_the_teacher():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(1, 4, 6), -1).expand(2, 4, 6)  # both global crops agree
    matching = torch.log(teacher[:1]).expand(3, 4, 6)
    other = torch.randn(3, 4, 6)
    assert ssl.dino_loss(matching, teacher, 1.0) < ssl.dino_loss(other, teacher, 1.0)


def test_ibot_loss_weights_each_image_equally():
    # image 0 has one masked patch, image 1 three, image 2 none; K = 2 and one-hot teachers.
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    image_of = torch.tensor([0, 1, 1, 1])
    loss = ssl.ibot_loss(student, teacher, image_of, n_images=3, temperature=1.0)
    img0 = -math.log(0.5)
    img1 = -(2 * math.log(0.75) + math.log(0.25)) / 3
    assert loss.item() == pytest.approx((img0 + img1) / 3, rel=1e-6)
    assert ssl.ibot_loss(student[:0], teacher[:0], image_of[:0], 3, 1.0).item() == 0.0


def test_koleo_closed_form():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # unit circle at 0, 90, 180 degrees after normalising
    assert ssl.koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2.0)), rel=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_block_mask_hits_the_ratio_exactly(ratio):
    grid = 8
    mask = ssl.block_mask(grid, ratio, np.random.default_rng(0))
    assert mask.shape == (grid, grid) and mask.dtype == bool
    assert mask.sum() == round(ratio * grid * grid)
    again = ssl.block_mask(grid, ratio, np.random.default_rng(0))
    assert (mask == again).all()


def test_block_mask_is_made_of_blocks():
    mask = ssl.block_mask(16, 0.4, np.random.default_rng(3))
    # In a block mask most masked patches have a masked 4-neighbour, unlike a random scatter of the same size.
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (neighbours & mask).sum() / mask.sum() > 0.9


def test_ema_update_closed_form():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        teacher.bias.fill_(0.0)
        student.weight.fill_(3.0)
        student.bias.fill_(2.0)
    ssl.ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 1.2))
    torch.testing.assert_close(teacher.bias, torch.full((1,), 0.2))

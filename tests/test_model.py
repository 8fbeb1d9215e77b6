"""Tests for qpmlib.model: MLP layout, pooling, feature maps, sparse head (reference_spec §2)."""

import numpy as np
import pytest
import torch
from model_fixtures import class_tokens, real_head, tiny_dense
from torch import nn

from qpmlib.config import ModelConfig
from qpmlib.model import DinoQPM, SparseHeadModel, build_model, join_tokens


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: several threads only contend on the shared CPU (BN goes from ~30 us to ~20 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokens(b=3, p=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, p + 1, d, generator=g)


def test_mlp_layout_matches_spec():
    m = DinoQPM(8, 5, n_layers=4, hidden_size=16, n_features=6)
    linears = [l for l in m.mlp if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(8, 16), (16, 16), (16, 16), (16, 6)]
    assert sum(isinstance(l, nn.BatchNorm1d) for l in m.mlp) == 4
    assert isinstance(m.mlp[-1], nn.ReLU)  # BN + ReLU on the last layer too (§2.2)
    one = DinoQPM(8, 5, n_layers=1, hidden_size=16, n_features=6)
    assert [(l.in_features, l.out_features) for l in one.mlp if isinstance(l, nn.Linear)] == [(8, 6)]
    plain_last = DinoQPM(8, 5, n_layers=2, hidden_size=16, n_features=6, last_layer_bn_relu=False)
    assert isinstance(plain_last.mlp[-1], nn.Linear)


def test_features_nonnegative_only_with_last_relu():
    x = _tokens()
    assert (DinoQPM(8, 5, n_layers=2, hidden_size=16, n_features=6)(x).feature_maps >= 0).all()
    assert (DinoQPM(8, 5, n_layers=2, hidden_size=16, n_features=6, last_layer_bn_relu=False)(x).feature_maps < 0).any()


def test_no_mlp_maps_are_raw_patch_tokens_row_major():
    x = _tokens(p=9)  # 3x3 grid
    m = DinoQPM(8, 5, n_layers=0, dropout=0.0).eval()
    out = m(x)
    assert m.n_features == 8 and out.feature_maps.shape == (3, 8, 3, 3)
    # patch p sits at row p // 3, column p % 3
    assert torch.equal(out.feature_maps[1, :, 1, 2], x[1, 1 * 3 + 2])
    assert torch.allclose(out.features, x[:, :9].mean(dim=1))


def test_bn_pools_all_tokens_including_cls():
    # one layer: maps = relu(BN(Wx + b)) with statistics over all B*(P+1) tokens (§2.2)
    m = DinoQPM(8, 5, n_layers=1, n_features=6, dropout=0.0).train()
    x = _tokens(b=2, p=4)
    h = m.mlp[0](x).reshape(-1, 6)
    expected = torch.relu((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5))
    expected = expected.reshape(2, 5, 6)[:, :4]  # patches only
    got = m(x).feature_maps.flatten(2).transpose(1, 2)
    assert torch.allclose(got, expected, atol=1e-5)
    # changing only the CLS token changes the patch maps (through the batch statistics)
    x2 = x.clone()
    x2[:, -1] += 5.0
    assert not torch.allclose(m(x2).feature_maps, m(x).feature_maps)


def test_pooling_variants():
    x = _tokens()
    avg = DinoQPM(8, 5, n_layers=2, hidden_size=16, n_features=6, dropout=0.0).eval()
    out = avg(x)
    assert torch.allclose(out.features, out.feature_maps.mean(dim=(2, 3)), atol=1e-6)
    cls = DinoQPM(8, 5, n_layers=2, hidden_size=16, n_features=6, pooling="cls", dropout=0.0).eval()
    out = cls(x)
    assert torch.allclose(out.features, cls.mlp(x)[:, -1])
    assert torch.allclose(out.logits, cls.head(out.features))
    with pytest.raises(ValueError, match="avg_pooling, cls"):
        DinoQPM(8, 5, pooling="max")


def test_sparse_head_closed_form_and_sorting():
    m = DinoQPM(8, 3, n_layers=2, hidden_size=16, n_features=6).eval()
    x = _tokens()
    dense = m(x)
    sel = np.array([4, 1, 2])  # unsorted on purpose
    w = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]])  # columns follow `sel`
    mean = torch.linspace(0.1, 0.6, 6)
    std = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.5, 1.0])  # feature 2 hits the 1e-6 floor
    m.set_sparse_head(sel, w, mean, std)
    out = m(x)
    order = np.argsort(sel)
    s, ws = np.sort(sel), torch.tensor(w[:, order], dtype=torch.float32)
    z = (dense.features[:, s] - mean[s]) / std[s].clamp_min(1e-6)
    assert torch.allclose(out.logits, z @ ws.T, rtol=1e-5)
    assert torch.equal(out.features, dense.features[:, s])
    assert torch.equal(out.feature_maps, dense.feature_maps[:, s])
    assert m.head is None and torch.equal(m.head_weight, ws)
    assert not any(p.requires_grad for n, p in m.named_parameters() if not n.startswith("mlp"))
    # statistics given for the selected features only give the same model
    m2 = DinoQPM(8, 3, n_layers=2, hidden_size=16, n_features=6).eval()
    m2.load_state_dict({k: v for k, v in m.state_dict().items() if k.startswith("mlp")}, strict=False)
    m2.set_sparse_head(sel, w, mean[sel], std[sel])
    assert torch.allclose(m2(x).logits, out.logits)


def test_sparse_head_without_standardisation_is_paper_bldd():
    m = DinoQPM(8, 2, n_layers=1, n_features=4).eval()
    x = _tokens()
    f = m(x).features
    m.set_sparse_head([0, 3], [[1, 0], [1, 1]], torch.ones(4), torch.ones(4) * 3, standardise=False)
    assert torch.allclose(m(x).logits, torch.stack([f[:, 0], f[:, 0] + f[:, 3]], dim=1))


@pytest.mark.parametrize(
    "sel, w, match",
    [([0, 0], [[1, 0], [0, 1]], "distinct"), ([0, 9], [[1, 0], [0, 1]], "distinct"),
     ([0, 1], [[0.5, 0], [0, 1]], "binary"), ([0, 1], [[1, 0]], "shape")],
)
def test_sparse_head_rejects_bad_input(sel, w, match):
    with pytest.raises(ValueError, match=match):
        DinoQPM(8, 2, n_layers=1, n_features=4).set_sparse_head(sel, w, torch.zeros(4), torch.ones(4))


def test_build_model_is_seeded_and_leaves_global_rng():
    cfg = ModelConfig(n_layers=2, hidden_size=16, n_features=6)
    before = torch.get_rng_state()
    a, b, c = (build_model(cfg, 8, 5, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_join_tokens_puts_cls_last_and_checks_shapes():
    p, c = np.ones((2, 4, 3), np.float16), np.zeros((2, 3), np.float16)
    t = join_tokens(p, c)
    assert t.dtype == torch.float32 and t.shape == (2, 5, 3) and t[:, -1].abs().sum() == 0
    with pytest.raises(ValueError, match="expected patches"):
        join_tokens(p, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="square"):
        DinoQPM(3, 2, n_layers=1, n_features=2)(torch.zeros(1, 6, 3))


# ------------------------------------------------------------------ SparseHeadModel (DINO-SLDD / DINO-QSENN head)


def test_sparse_head_forward_matches_formula_and_sorts_selection():
    dense = tiny_dense()
    weight, bias = real_head()
    mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([1.0, 2.0, 0.5], np.float32)
    model = SparseHeadModel(dense, [4, 0, 2], weight, bias, mean, std).eval()
    assert model.selected.tolist() == [0, 2, 4]
    x = class_tokens().batch(np.arange(5))
    out = model(x)
    pooled = dense.mlp(x)[:, :-1].mean(dim=1)  # (B, N_f)
    order = [1, 2, 0]  # positions of 0, 2, 4 in the given selection [4, 0, 2]
    z = (pooled[:, [0, 2, 4]] - torch.tensor(mean[order])) / torch.tensor(std[order])
    expected = z @ torch.tensor(weight[:, order]).T + torch.tensor(bias)
    torch.testing.assert_close(out.logits, expected)
    assert out.features.shape == (5, 3) and out.feature_maps.shape == (5, 3, 2, 2)
    assert model.head_weight.shape == (3, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"mean", "std"} <= trainable and "weight" not in trainable and "bias" not in trainable


def test_sparse_head_rejects_bad_shapes():
    dense = tiny_dense()
    weight, bias = real_head()
    with pytest.raises(ValueError, match="distinct"):
        SparseHeadModel(dense, [0, 0, 1], weight, bias, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        SparseHeadModel(dense, [0, 1], weight, bias, np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="bias"):
        SparseHeadModel(dense, [0, 1, 2], weight, bias[:2], np.zeros(3), np.ones(3))


def test_both_heads_share_one_trunk():
    dense = tiny_dense()
    weight, bias = real_head()
    model = SparseHeadModel(dense, [0, 2, 4], weight, bias, np.zeros(3), np.ones(3)).eval()
    x = class_tokens().batch(np.arange(5))
    pooled, maps = dense.encode(x)
    out = model(x)
    torch.testing.assert_close(out.features, pooled[:, [0, 2, 4]])
    torch.testing.assert_close(out.feature_maps, maps[:, [0, 2, 4]])
    torch.testing.assert_close(dense(x).feature_maps, maps)


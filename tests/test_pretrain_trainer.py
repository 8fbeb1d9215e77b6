"""Tests for qpmlib.pretrain.trainer and data_scripts/pretrain_backbone.py on the tiny configuration (seconds)."""

import json
import math

import numpy as np
import pytest
import torch

from qpmlib import backbones
from qpmlib.pretrain import trainer
from qpmlib.pretrain.trainer import Phase, PretrainConfig

VARIANT = "standin_t14_reg"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical runs need the same thread count
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run(cfg, out, data_dir, **kw):
    return trainer.pretrain(cfg, out, data_dir=data_dir, verbose=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    torch.set_num_threads(1)
    cfg = trainer.tiny_config(VARIANT)
    return cfg, run(cfg, tmp_path_factory.mktemp("ref"), data_dir)


def test_tiny_run_learns(reference):
    cfg, result = reference
    hist = result.history
    assert len(hist) == cfg.steps and all(math.isfinite(h["loss"]) for h in hist)
    first, last = hist[: 3], hist[-3:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    # DINO's and iBOT's losses are the teacher's entropy plus KL(teacher || student): the KL falls as the student
    # learns to predict the teacher, whatever the teacher's entropy does
    assert mean(last, "dino_kl") < mean(first, "dino_kl")
    assert mean(last, "ibot_kl") < mean(first, "ibot_kl")
    for key in ("aux_attributes", "aux_parts"):
        if key in hist[0]:
            assert mean(last, key) < mean(first, key)


def test_rerun_and_resume_are_bit_identical(reference, tmp_path, data_dir):
    cfg, ref = reference
    again = run(cfg, tmp_path / "again", data_dir)
    for (k, a), b in zip(ref.teacher.state_dict().items(), again.teacher.state_dict().values()):
        assert torch.equal(a, b), k
    part = run(cfg, tmp_path / "split", data_dir, stop_after=5, checkpoint_seconds=0.0)
    assert len(part.history) == 5
    resumed = run(cfg, tmp_path / "split", data_dir)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]
    for (k, a), b in zip(ref.teacher.state_dict().items(), resumed.teacher.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_of_another_configuration_is_refused(reference, tmp_path, data_dir):
    cfg, _ = reference
    run(cfg, tmp_path / "run", data_dir, stop_after=1)
    with pytest.raises(ValueError, match="another configuration"):
        run(trainer.tiny_config(VARIANT, seed=1), tmp_path / "run", data_dir)


def test_export_writes_fp16_weights_with_a_card_the_loader_checks(reference, tmp_path, monkeypatch):
    cfg, result = reference
    path = trainer.export(result, cfg, tmp_path)
    card = json.loads((tmp_path / f"{VARIANT}.json").read_text())
    assert card["sha256"] == backbones.file_sha256(path) and card["steps"] == cfg.steps
    assert card["seed"] == cfg.seed and card["corpus"]["name"] == "tiny_corpus"
    assert card["config"]["variant"] == VARIANT and card["loss_curve"][-1]["step"] == cfg.steps
    for key in ("script", "commit", "wall_seconds", "machine", "objective", "images_per_second"):
        assert key in card
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    bb = backbones.build_backbone(VARIANT, image_size=224)
    assert bb.pretrained and bb.n_registers == 4
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    teacher = result.teacher.eval()
    with torch.no_grad():
        cls, patches = trainer.encode(teacher.half().float(), x)  # the fp16-rounded teacher
    got_cls, got_patches = bb(x)
    torch.testing.assert_close(got_patches, patches, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_cls, cls, atol=1e-4, rtol=1e-4)


def test_schedules_warm_up_and_anneal():
    cfg = PretrainConfig(variant=VARIANT, steps=100, warmup=0.1, lr=1e-3, min_lr=1e-6, teacher_warmup=0.3)
    s0, s9, s99 = (trainer._schedule(cfg, t) for t in (0, 9, 99))
    assert s0["lr"] == pytest.approx(1e-4) and s9["lr"] == pytest.approx(1e-3)
    assert s99["lr"] == pytest.approx(1e-6) and s99["momentum"] == pytest.approx(1.0)
    assert s0["momentum"] == pytest.approx(cfg.momentum[0]) and s0["weight_decay"] == pytest.approx(0.04)
    assert s0["teacher_temperature"] == 0.04 and trainer._schedule(cfg, 30)["teacher_temperature"] == 0.07
    assert trainer._phase(cfg, 89).global_size == 112 and trainer._phase(cfg, 90).global_size == 224


def test_batches_cover_each_epoch_once():
    cfg = PretrainConfig(variant=VARIANT, batch_size=4, seed=3)
    seen = np.concatenate([trainer._batch_indices(cfg, t, 10) for t in range(5)])  # 20 = two epochs of 10
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))


def test_configuration_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid variants: .*standin_s14_reg"):
        trainer.config_for("standin_x14")
    with pytest.raises(ValueError, match="multiples of the patch size 14"):
        trainer.tiny_config(VARIANT, phases=(Phase(1.0, 30, 14),))
    with pytest.raises(ValueError, match="valid: bf16, fp32"):
        trainer.tiny_config(VARIANT, precision="fp16")


def test_script_on_the_tiny_configuration(tmp_path, monkeypatch, capsys):
    import importlib.util

    from qpmlib import paths

    spec = importlib.util.spec_from_file_location("pretrain_backbone",
                                                  paths.REPO_ROOT / "data_scripts" / "pretrain_backbone.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path / "data"))
    written = script.main(["--variant", VARIANT, "--tiny", "--threads", "1", "--quiet", "--steps", "2",
                           "--run-dir", str(tmp_path / "runs"), "--weights-dir", str(tmp_path / "w")])
    assert written == [tmp_path / "w" / f"{VARIANT}.safetensors"] and written[0].is_file()
    assert "2 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--variant", "standin_q14"])
    assert "valid variants: standin_t14" in capsys.readouterr().err

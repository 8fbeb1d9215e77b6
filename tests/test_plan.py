"""qpmlib.analysis.plan: every run the book needs, listed once."""

from qpmlib.analysis import peers, plan, sweeps, tables
from qpmlib.config import get_profile
from qpmlib.runs.methods import METHOD_KEYS, PEER_KEYS, RunRequest


def test_book_requests_cover_the_tables_and_figures_once():
    prof = get_profile("smoke")
    requests = plan.book_requests(prof)
    assert len(requests) == len(set(requests)) and all(isinstance(r, RunRequest) for r in requests)
    assert {r.method for r in requests} == set(METHOD_KEYS) | set(PEER_KEYS)
    for _, request in tables.table1_requests(prof) + tables.table3_requests(prof) + tables.table4_requests(prof):
        assert request in requests
    for grid in sweeps.FIGURE_GRIDS.values():
        assert all(r in requests for _, r in sweeps.sweep_requests(prof, grid))
    assert RunRequest.of("dino_qpm", [0], tables.OPEN_SOLVER_CHECK) in requests
    assert RunRequest.of("dino_qpm", prof.seeds, {"backbone.name": prof.backbone.name}) in requests  # Table 4
    assert all(r in requests for r in peers.peer_requests(prof))  # the peer heads' chapter
    assert RunRequest.of("protosvit", [prof.seeds[0]]) in requests
    # the stand-in chapter's random twin, on stand-in profiles only
    assert RunRequest.of("dino_qpm", [prof.seeds[0]], {"backbone.weights": "random"}) in requests
    assert not any(dict(r.overrides).get("backbone.weights") == "random" for r in plan.book_requests("paper"))


def test_requests_are_values():
    a = RunRequest.of("dino_qpm", [0, 1], {"qp.n_selected": 6, "model.n_layers": 2})
    assert a == RunRequest.of("dino_qpm", (0, 1), {"model.n_layers": 2, "qp.n_selected": 6})
    assert a.overrides == (("model.n_layers", 2), ("qp.n_selected", 6)) and hash(a) == hash(RunRequest.of(
        "dino_qpm", [0, 1], {"model.n_layers": 2, "qp.n_selected": 6}))


def test_embedding_profiles_are_each_store_the_book_reads_once():
    stores = [(p.data.dataset, p.data.n_classes, p.backbone.name) for p in plan.embedding_profiles("paper_shapes")]
    assert len(stores) == len(set(stores))
    assert ("synthcars", 196, "dinov2_vitb14_reg") in stores  # Table 1 on the Cars stand-in
    assert {b for d, _, b in stores if d == "synthbirds"} == {"dinov2_vitb14", *get_profile("paper").sweeps.backbones}
    assert [(p.data.dataset, p.backbone.name, p.backbone.weights) for p in plan.embedding_profiles("smoke")] == \
        [("synthbirds", "standin_t14_reg", "auto"), ("synthbirds", "standin_t14", "auto"),  # Table 3's other twin
         ("synthbirds", "standin_t14_reg", "random")]  # the stand-in chapter's random twin


def test_compute_runs_requests_here_or_hands_them_to_the_cluster_executor(monkeypatch):
    calls = []
    monkeypatch.setattr(RunRequest, "run", lambda self, prof, **kw: calls.append(("run", self.method, kw)))
    monkeypatch.setattr(plan, "compute_requests", lambda reqs, prof, **kw: calls.append(("jobs", len(reqs), kw)))
    requests = [RunRequest.of("dense", [0]), RunRequest.of("dino_qpm", [0, 1])]
    monkeypatch.delenv("QPMLIB_EXECUTOR", raising=False)
    plan.compute(requests, "smoke", verbose=False)
    assert calls == [("run", "dense", {"executor": "local", "verbose": False}),
                     ("run", "dino_qpm", {"executor": "local", "verbose": False})]
    calls.clear()
    monkeypatch.setenv("QPMLIB_EXECUTOR", "slurm")  # all requests at once, so that their jobs run side by side
    plan.compute(requests, "smoke", verbose=False)
    assert calls == [("jobs", 2, {"executor": "slurm", "verbose": False})]

"""``Run``: one method's finished run for one seed, as the results store holds it. Nothing here trains.

Every method of Table 1 returns the same type. A run rests on stored stages (:class:`qpmlib.results.Result`),
in the order they were computed:

==========================  ==============================================
method                      stages
==========================  ==============================================
``linear_probe``, ``dense`` ``dense``
``dino_qpm``, ``..compact``  ``dense``, ``qp``, ``qpm`` (``dense`` only when ``model.n_layers == 0``)
``dino_sldd``                ``dense``, ``sldd_selection``, ``dino_sldd``
``dino_qsenn``               ``dense``, ``sldd_selection``, ``dino_qsenn``
``protosvit``, ``protofm``   their own stage (:mod:`qpmlib.runs.peer_heads`)
``klc``                      its own stage (a prototype bank, no model)
==========================  ==============================================

Every stage that trains stores its metrics in one layout (:func:`qpmlib.runs.evaluate.model_metrics`):
``accuracy``, ``plausibility``, ``sid_at_5``, ``class_independence``, ``contrastiveness``, ``n_features``,
``n_per_class``, ``seconds_per_epoch`` and, on SynthBirds, ``part_alignment`` and ``part_peak_alignment``.
``run.metrics`` are those of the last stage; :meth:`Run.model` rebuilds the model of any stage that has one. A key
that a later qpmlib added (``part_peak_alignment``) is absent from runs stored before it: the store does not
recompute them (the metric set is not part of a result's hash), so readers use ``run.metrics.get(key)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from qpmlib.config import Profile
from qpmlib.heads.protofm import ProtoFM
from qpmlib.heads.protosvit import ProtoSViT
from qpmlib.model import DinoQPM, SparseHeadModel
from qpmlib.results import (
    FEATURES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    MODEL_SPEC_FILE,
    PREDICTIONS_FILE,
    SELECTION_FILE,
    SPARSE_FILE,
    Result,
)

__all__ = ["Run", "MODEL_LOADERS", "load_dense", "load_qpm", "load_sparse_head", "load_peer_head"]


def load_dense(result: Result) -> DinoQPM:
    """The trained dense model of a ``dense`` stage, rebuilt on the CPU in eval mode."""
    model = DinoQPM(**result.json(MODEL_SPEC_FILE))
    model.load_state_dict(result.tensors(MODEL_FILE))
    return model.eval()


def load_qpm(result: Result) -> DinoQPM:
    """The fine-tuned DINO-QPM model (binary sparse head) of a ``qpm`` stage, on the CPU in eval mode."""
    spec = result.json(MODEL_SPEC_FILE)
    standardise = spec.pop("standardise")
    model = DinoQPM(**spec)
    head = {k: v.numpy() for k, v in result.tensors(SPARSE_FILE).items()}
    model.set_sparse_head(head["selected"], head["assignment"], head["mean"], head["std"], standardise=standardise)
    model.load_state_dict(result.tensors(MODEL_FILE))
    return model.eval()


def load_sparse_head(result: Result) -> SparseHeadModel:
    """The DINO-SLDD / DINO-QSENN model of its own stage, on the CPU in eval mode."""
    spec = result.json(MODEL_SPEC_FILE)
    head = spec.pop("head")
    state = result.tensors(MODEL_FILE)
    t = result.tensors(SPARSE_FILE)
    model = SparseHeadModel(DinoQPM(**spec), t["selected"], t["weight"], t["bias"], state["mean"], state["std"],
                            dropout=head["dropout"], train_normalisation=head["train_normalisation"])
    model.load_state_dict(state)
    return model.eval()


def load_peer_head(result: Result) -> nn.Module:
    """The trained ProtoS-ViT or ProtoFM head of its stage (:mod:`qpmlib.runs.peer_heads`), on the CPU in eval mode.

    Its ``class_weight`` is the (N_c, K) non-negative classifier; evaluate it with
    :func:`qpmlib.heads.evaluate_head` (the spec's ``importance_threshold``).
    """
    spec = dict(result.json(MODEL_SPEC_FILE))
    head = {"protosvit": ProtoSViT, "protofm": ProtoFM}[spec.pop("head")]
    spec.pop("importance_threshold")
    in_dim, n_classes = spec.pop("in_dim"), spec.pop("n_classes")
    model = head(in_dim, n_classes, **spec)
    model.load_state_dict(result.tensors(MODEL_FILE))
    return model.eval()


#: Stage (result kind) -> function that rebuilds its model from the stored result.
MODEL_LOADERS: dict[str, Callable[[Result], nn.Module]] = {
    "dense": load_dense,
    "qpm": load_qpm,
    "dino_sldd": load_sparse_head,
    "dino_qsenn": load_sparse_head,
    "protosvit": load_peer_head,
    "protofm": load_peer_head,
}


@dataclass
class Run:
    """One method's run for one seed.

    Attributes:
        method: a key of :data:`qpmlib.runs.methods.METHODS` (and of :data:`qpmlib.paper.METHODS`).
        profile: the profile after the method's and the caller's overrides.
        seed: run seed.
        stages: the stored stages this run rests on, in order (see the module docstring).
    """

    method: str
    profile: Profile
    seed: int
    stages: dict[str, Result]

    @property
    def dataset(self) -> str:
        """Dataset key of the run."""
        return self.profile.data.dataset

    @property
    def last(self) -> str:
        """Name of the run's last stage, the one its :attr:`metrics` and :meth:`model` come from."""
        return next(reversed(self.stages))

    def _stage(self, stage: str) -> Result:
        if stage not in self.stages:
            hint = " (model.n_layers == 0 stops after the dense stage)" if self.stages.keys() == {"dense"} else ""
            raise ValueError(f"this {self.method} run has no {stage!r} stage{hint}; its stages: "
                             f"{', '.join(self.stages)}")
        return self.stages[stage]

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics of the last stage (see the module docstring for the keys)."""
        return self.stages[self.last].metrics

    def stage_metrics(self) -> dict[str, dict[str, Any]]:
        """``{"dense": ..., <method>: ...}``: the dense stage's metrics and, when the method has a stage of its
        own after it, that stage's (a DINO-QPM run with ``model.n_layers == 0`` has only "dense"; a peer head,
        which has no dense stage, only its own)."""
        out = {"dense": self.stages["dense"].metrics} if "dense" in self.stages else {}
        if self.last != "dense":
            out[self.method] = self.metrics
        return out

    def model(self, stage: str | None = None) -> nn.Module:
        """The trained model of ``stage`` (default: the last), rebuilt on the CPU in eval mode.

        Its ``head_weight`` is the (N_c, K) head every metric reads.

        Raises:
            ValueError: for a stage the run does not have or that holds no model (``qp``, ``sldd_selection``).
        """
        stage = self.last if stage is None else stage
        result = self._stage(stage)
        if stage not in MODEL_LOADERS:
            raise ValueError(f"stage {stage!r} holds no model; stages with one: {', '.join(MODEL_LOADERS)}")
        return MODEL_LOADERS[stage](result)

    def dense_model(self) -> DinoQPM:
        """The dense model every method starts from."""
        return self.model("dense")

    def qp_solution(self) -> dict[str, np.ndarray]:
        """The stored QP arrays of a DINO-QPM run: ``selected``, ``assignment`` (bool), ``A`` and ``R``."""
        t = {k: v.numpy() for k, v in self._stage("qp").tensors(SELECTION_FILE).items()}
        t["assignment"] = t["assignment"].astype(bool)
        return t

    @property
    def selected(self) -> np.ndarray:
        """(N*_f,) sorted indices of the features the QP selected."""
        return self.qp_solution()["selected"]

    @property
    def assignment(self) -> np.ndarray:
        """(N_c, N*_f) bool assignment of the QP; column j is feature ``selected[j]``."""
        return self.qp_solution()["assignment"]

    def sparse_head(self) -> dict[str, np.ndarray]:
        """DINO-QPM's sparse head: ``selected``, ``assignment`` (float 0/1), ``mean`` and ``std``."""
        return {k: v.numpy() for k, v in self._stage("qpm").tensors(SPARSE_FILE).items()}

    def train_features(self, stage: str = "dense") -> dict[str, np.ndarray]:
        """Eval-mode training features of a ``dense`` or ``qpm`` stage: ``features``, ``labels`` (+ mean/std)."""
        return {k: v.numpy() for k, v in self._stage(stage).tensors(FEATURES_FILE).items()}

    def predictions(self) -> pd.DataFrame:
        """Per test sample: ``image_id``, ``label``, ``dense_pred`` (absent for a peer head, which has no dense
        stage) and ``pred`` (the last stage's model).

        Raises:
            FileNotFoundError: when the last stage stored no predictions.
        """
        own = self.stages[self.last].tensors(PREDICTIONS_FILE)
        dense = self.stages["dense"].tensors(PREDICTIONS_FILE) if "dense" in self.stages else None
        frame = pd.DataFrame({"image_id": own["image_ids"].numpy(), "label": own["labels"].numpy()})
        if dense is not None:
            frame["dense_pred"] = dense["pred"].numpy()
        return frame.assign(pred=own["pred"].numpy())

    def history(self, stage: str | None = None) -> pd.DataFrame:
        """Per-epoch training log of ``stage`` (default: the last; Q-SENN: its iterations one after another)."""
        log = self._stage(self.last if stage is None else stage).json(HISTORY_FILE)
        epochs = log["epochs"] if "epochs" in log else [e for it in log["iterations"] for e in it["epochs"]]
        return pd.DataFrame(epochs)

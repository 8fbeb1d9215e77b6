"""Other interpretable heads on the same frozen patch tokens as DINO-QPM, and names for DINO-QPM's features.

Every head reads the cached tokens of the embedding store (:class:`qpmlib.train.TokenData`: patch tokens
(N, P, D), CLS (N, D), labels) and is evaluated into a :class:`~qpmlib.heads.base.HeadEvaluation` whose maps,
weights and features :mod:`qpmlib.metrics` takes unchanged (:func:`~qpmlib.heads.base.head_metrics`).

* :mod:`~qpmlib.heads.protosvit`: ProtoS-ViT (:func:`train_protosvit`).
* :mod:`~qpmlib.heads.protofm`: ProtoFM (:func:`train_protofm`), with its augmented views in
  :mod:`~qpmlib.heads.views`.
* both are evaluated by :func:`~qpmlib.heads.base.evaluate_head` (the reference's importance pruning).
* :mod:`~qpmlib.heads.klc`: Keypoint Labelling Classifiers, which train nothing (:func:`fit_klc`,
  :func:`predict_klc`).
* :mod:`~qpmlib.heads.parts`: part ground truth on the patch grid (SynthBirds, CUB) for KLC and naming.
* :mod:`~qpmlib.heads.named_features`: part names, class explanations in words, agreement with SynthBirds's
  defining attributes.

Each module's docstring lists its deviations from the paper and the authors' code.
"""

from qpmlib.heads.base import HeadEvaluation, TrainedHead, evaluate_head, head_compactness, head_metrics
from qpmlib.heads.klc import KLCConfig, fit_klc, klc_compactness, predict_klc
from qpmlib.heads.named_features import attribute_agreement, class_explanations, name_features
from qpmlib.heads.parts import PartTruth, part_truth, require_part_truth
from qpmlib.heads.protofm import ProtoFMConfig, train_protofm
from qpmlib.heads.protosvit import ProtoSViTConfig, train_protosvit

__all__ = [
    "HEADS",
    "HeadEvaluation",
    "KLCConfig",
    "PartTruth",
    "ProtoFMConfig",
    "ProtoSViTConfig",
    "TrainedHead",
    "attribute_agreement",
    "class_explanations",
    "evaluate_head",
    "fit_klc",
    "head_compactness",
    "head_metrics",
    "klc_compactness",
    "name_features",
    "part_truth",
    "predict_klc",
    "require_part_truth",
    "train_protofm",
    "train_protosvit",
]

#: The peer heads, by the key a Table 1 registry entry would use.
HEADS = ("protosvit", "protofm", "klc")

"""Analysis: what the chapters compute from finished runs (no figure is drawn here, nothing is displayed).

* :mod:`~qpmlib.analysis.summary`: mean ± std over seeds (``summarise``), the comparison with the paper
  (``beside_paper``, ``gather_beside_paper``).
* :mod:`~qpmlib.analysis.claims`: the paper's claims, each judged by its own relation and bound.
* :mod:`~qpmlib.analysis.tables`: Tables 1-4 and the Fig. 2 radar from runs; Patch Contextualisation; the QP.
* :mod:`~qpmlib.analysis.sweeps`: the ablation grids of Figs. 7-13 and their trends.
* :mod:`~qpmlib.analysis.pairs`: class pairs, the parts features sit on, prototype patches.
* :mod:`~qpmlib.analysis.inspection`: one trained run with its data and feature maps.
* :mod:`~qpmlib.analysis.localisation`: where explanations lie on the object (Figs. 1 and 6, from the metric's
  own functions).
* :mod:`~qpmlib.analysis.failures`: where DINO-QPM and the dense model disagree.
* :mod:`~qpmlib.analysis.report`: the reproducibility report (paper-vs-code differences, compute time).
* :mod:`~qpmlib.analysis.standin`: the stand-in backbone's cards, calibration, probes and token norms.
* :mod:`~qpmlib.analysis.plan`: every run the book needs, as one list of requests (for computing them ahead).
"""

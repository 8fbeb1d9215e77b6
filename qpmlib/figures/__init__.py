"""Figures: every figure builder of the book. Each takes finished numbers and returns a matplotlib ``Figure``.

* :mod:`~qpmlib.figures.explanations`: local explanations, CAMs, class pairs, prototype patches, Fig. 10,
  any method on one test image.
* :mod:`~qpmlib.figures.plots`: the Fig. 2 radar, sweep lines and grids (Figs. 7-13), bars beside the paper.
* :mod:`~qpmlib.figures.localisation`: the linear probe's CAM against DINO-QPM (Fig. 1), what Plausibility
  measures (Fig. 6).
* :mod:`~qpmlib.figures.failures`: the failure-analysis rows of Figs. 18-23.
* :mod:`~qpmlib.figures.walkthrough`: the introduction's walk of one image through the pipeline.
* :mod:`~qpmlib.figures.standin`: the stand-in backbone's loss curves, patch-token PCA and token-norm histograms.
"""

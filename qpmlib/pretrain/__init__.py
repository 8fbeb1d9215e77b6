"""The stand-in backbone: a miniature DINOv2 that this project pretrains itself on SynthBirds images.

DINOv2 weights and CUB cannot be had offline, so the ``demo`` profile uses a small ViT of the DINOv2 family
(patch 14, CLS token, 0 or 4 registers, LayerScale, final norm; timm's ``VisionTransformer``) that this package
pretrains on a SynthBirds corpus that shares no class and no image with the profiles' datasets: DINOv2's
self-supervised losses (DINO, iBOT, KoLeo) plus an auxiliary objective on the corpus's own attributes and part
values (see :mod:`~qpmlib.pretrain.trainer`).

Modules, in the order the pretraining uses them:

* :mod:`~qpmlib.pretrain.corpus`: the unlabelled corpus and the held-out probe set (disjoint SynthBirds folders)
  and the multi-crop views a training step reads.
* :mod:`~qpmlib.pretrain.ssl`: DINO and iBOT heads and losses (centring, sharpening), KoLeo, block masks, EMA.
* :mod:`~qpmlib.pretrain.trainer`: the training loop with resumable checkpoints, the export to a safetensors file
  and its provenance card.
* :mod:`~qpmlib.pretrain.probe`: measurements of a frozen backbone: k-NN and linear probes, the first three
  principal components of the patch tokens as RGB, token norms (register artefacts).

The stand-in chapter's tables are in :mod:`qpmlib.analysis.standin`, its figures in :mod:`qpmlib.figures.standin`.

``data_scripts/pretrain_backbone.py`` (``make weights``) runs it; :mod:`qpmlib.backbones` loads the committed files.
"""

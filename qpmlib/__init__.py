"""qpmlib: the library behind the DINO-QPM reproducibility book.

Modules follow the pipeline and import only from earlier stages:
``profiles``/``paths`` -> ``data`` -> ``backbones`` -> ``embeddings`` -> ``model``/``losses`` -> ``qp``
-> ``train`` -> ``metrics`` -> ``explain`` -> ``results`` -> ``plots``/``tables``.
"""

__version__ = "0.1.0"

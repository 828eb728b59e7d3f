"""stmedfm: a reproducible study of STMedFM, a lightweight cross-modal (2D + 3D) multi-task backbone on MedMNIST.

Modules, one concept each: ``paths`` (where things live), ``registry`` (facts of every MedMNIST flag),
``data`` (find, verify, load, augment), ``download``, ``synthetic`` (test files of official shapes),
``model`` and ``peft`` (the architecture and its LoRA / adapter variants), ``metrics``, ``train``,
``config`` (the typed study parameters), ``study`` (runner and result store), ``studyname`` (one name per study,
one parameter file per store), ``inference`` (trained models of a store for new images), ``tables``, ``plots``,
``cli`` (also ``python -m stmedfm``).
"""

from stmedfm.errors import StmedfmError

__version__ = "0.1.0"
__all__ = ["StmedfmError", "__version__"]

"""finr3d: F-INR functional tensor decompositions for neural fields.

The package imports lazily: ``import finr3d`` and ``import finr3d.codec`` work
without torch, and torch is loaded the first time a torch-backed name
(``fit``, ``FactorizedField``, a target, ...) is touched.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "FactorizedField": "finr3d.field",
    "FieldConfig": "finr3d.config",
    "FitConfig": "finr3d.config",
    "fit": "finr3d.fitting",
    "fit_field": "finr3d.fitting",
    "batch": "finr3d.batch",
    "load": "finr3d.field",
    "ImageTarget": "finr3d.targets",
    "VolumeTarget": "finr3d.volume",
    "load_target": "finr3d.sources",
    "SDFTarget": "finr3d.sdf",
    "VideoTarget": "finr3d.video",
    "extract_mesh": "finr3d.meshing",
    "evaluate": "finr3d.evaluation",
    "errors": "finr3d.errors",
    "codec": "finr3d.codec",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'finr3d' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

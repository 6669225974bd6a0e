"""Matrix cases of the methods beyond the foundation, one module per method (family) in this folder.

Each module may define:
  CASES        {case name: family -> config, or a falsy value when the case does not apply to it}
  FORMULAS     {method name: (AdaptedModel, adapter name) -> trainable parameters from layer shapes}
  INIT_CHECKS  {case name: (adapted outputs, base outputs) -> None, asserting the method's own init
               condition}; a case without one must start exactly at the base model
  TRAIN_LRS    {case name: learning rate for the matrix's 12 training steps} (default 1e-2)
Modules whose name starts with "_" are helpers, not cases.
"""

from __future__ import annotations

import importlib
import pkgutil

EXTRA_CASES: dict = {}
EXTRA_FORMULAS: dict = {}
INIT_CHECKS: dict = {}
TRAIN_LRS: dict = {}

for _info in pkgutil.iter_modules(__path__):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _table, _attr in ((EXTRA_CASES, "CASES"), (EXTRA_FORMULAS, "FORMULAS"), (INIT_CHECKS, "INIT_CHECKS"),
                          (TRAIN_LRS, "TRAIN_LRS")):
        _extra = getattr(_module, _attr, {})
        _clash = set(_extra) & set(_table)
        if _clash:
            raise ValueError(f"method_cases/{_info.name}.py redefines {sorted(_clash)}")
        _table.update(_extra)

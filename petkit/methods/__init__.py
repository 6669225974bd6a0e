"""Built-in methods: every module in this package registers its method(s) when imported, and importing
the package imports them all (a new method is one new file here, nothing else to edit)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

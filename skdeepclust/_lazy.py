"""Public names of a package imported when first asked for.

torch, timm and scikit-learn take seconds to import; ``import skdeepclust`` and
``skdeepclust --help`` need none of them.
"""

from __future__ import annotations

import importlib


def lazy_namespace(package, homes, namespace, otherwise=None, submodules=()):
    """``__getattr__`` and ``__dir__`` for ``package``, whose names in ``homes`` (name:
    submodule) are imported from their submodule when first asked for and then kept in
    ``namespace`` (the package's ``globals()``), as are its ``submodules`` themselves,
    as numpy's are. Other names go to ``otherwise(name)``.
    """
    def __getattr__(name):
        if name in homes:
            value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
            namespace[name] = value
            return value
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")  # which sets the attribute
        if otherwise is not None:
            return otherwise(name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(homes) | set(submodules))

    return __getattr__, __dir__

"""petkit's version: one module of its own, so code anywhere in the package can read it without
importing the package root (which imports everything), and pyproject.toml reads it from here."""

__version__ = "0.1.0"

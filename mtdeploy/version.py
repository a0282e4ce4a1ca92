"""The package version, in a module of its own so that anything may read it without importing
the package root (whose ``compile`` pulls in the whole pipeline)."""

__version__ = "0.1.0"

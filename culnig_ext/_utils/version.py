"""The package version, in one place (``culnig_ext.__version__`` and every provenance record read it here)."""
__version__ = "0.1.0"

"""The ``culnig`` command: one module per subcommand over the Python API; parse, call, print where the outputs
went, and no logic."""
__all__ = ["main"]

"""The fused attribution kernels' one Python face: ``ops`` (typed wrappers over ``torch.ops.culnig.*``), their
pure-PyTorch ``reference``, the ``loader`` (ahead-of-time module or cached JIT build) and ``build``
(``culnig build``). The sources are in the repository's ``csrc/``. Kernels know nothing of models."""
__all__ = ["ops", "reference", "loader", "build"]

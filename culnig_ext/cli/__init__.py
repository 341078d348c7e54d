"""The ``culnig`` command: one module per subcommand over the Python API; parse, call, print where the outputs
went, and no logic.

``main`` (``culnig = "culnig_ext.cli.main:main"``) and ``build_parser``; each subcommand module (``score``,
``merge``, ``identify``, ``evaluate``, ``prompts``, ``overlap``, ``report``, ``build``, ``finetune``, ``run``,
``sweep``, ``compare``) has ``add_parser(subparsers)`` and ``run(args)``; ``common`` holds the shared option groups
and helpers. Nothing imports torch until a command runs (``culnig --help`` stays fast)."""
__all__ = ["main"]

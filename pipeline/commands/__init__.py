"""``biomine`` subcommands: one module each, exposing ``register(subparsers)``.

A module's ``register`` adds its parser and sets ``func`` to a handler taking the parsed ``args``
and returning an exit code. Heavy imports (torch, ray, pyarrow) happen inside the handler so that
``biomine --help`` stays instant.
"""

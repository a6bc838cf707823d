"""CLI command modules. Each module defines ``register(app)`` and is listed in ``cli.COMMAND_MODULES``."""

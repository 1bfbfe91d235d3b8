"""The ``loopfree`` subcommands, one module per stage they drive. Each has ``register(app)``."""

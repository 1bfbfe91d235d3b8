"""The ``loopfree`` command line: the entry point that wires every stage's commands.

A job flows producer -> taskqueue -> worker batch -> sampler -> storage; ``docs/architecture.md``
has the layers. This package sits on top: it imports the stages, and no stage imports it.
"""

__version__ = "0.1.0"

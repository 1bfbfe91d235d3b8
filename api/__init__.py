"""The HTTP API of ``loopfree api`` (``app``): versioned JSON endpoints over the same intake,
status queries and cancel as the CLI, behind bearer tokens (``auth``), with per-owner quotas
(``submitting``), streamed request bodies (``intake``, ``limits``) and RFC 9457 errors
(``problems``). It sits above the stages it calls (``producer``, ``status``) and below the CLI."""

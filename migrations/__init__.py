"""Alembic migrations for the loopfree schema.

Run them through ``storage.migrate`` (or ``loopfree db upgrade``); no ``alembic.ini`` is needed.
New revisions: ``storage.migrate.revision(url, message)`` autogenerates one from ``storage.models``.
"""

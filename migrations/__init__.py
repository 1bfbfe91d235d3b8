"""Alembic migrations for the loopfree schema.

Run them through ``migrations.runner`` (or ``loopfree db upgrade``); no ``alembic.ini`` is needed.
New revisions: ``migrations.runner.revision(url, message)`` autogenerates one from
``storage.models``.
"""

"""The storage layer: SQL metadata for submissions and jobs, and object storage for images.

Modules, one concern each:

- ``models``       typed SQLAlchemy tables (``Submission``, ``Job``) and ``JobStatus``
- ``db``           engine factory (SQLite pragmas, PostgreSQL pre-ping), sessions, error translation
- ``submissions``  creating submissions and bulk-inserting their jobs, idempotently
- ``bulk``         the bulk insert itself: COPY on PostgreSQL, executemany on SQLite
- ``jobs``         guarded status transitions (compare-and-set UPDATEs)
- ``queries``      counts, pagination and stuck-job searches
- ``stats``        small aggregates for the status command and metrics
- ``migrate``      Alembic ``upgrade`` / ``downgrade`` / ``current`` as plain functions
- ``objects``      the ``ObjectStore`` interface, ``open_store(url)`` and key helpers
- ``s3`` / ``local`` the two object store backends
- ``uploads``      ``UploadPool``: bounded, back-pressured background uploads

Nothing here imports the worker, the producer or torch.
"""

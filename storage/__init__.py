"""The storage layer: SQL metadata for submissions and jobs, and object storage for images.

Modules, one concern each:

- ``models``       typed SQLAlchemy tables (``Submission``, ``Job``) and ``JobStatus``
- ``db``           engine factory (SQLite pragmas, PostgreSQL pre-ping), sessions, error translation
- ``submissions``  creating submissions and bulk-inserting their jobs, idempotently
- ``bulk``         the bulk insert itself: COPY on PostgreSQL, executemany on SQLite
- ``jobs``         guarded status transitions (compare-and-set UPDATEs)
- ``queries``      loading, counting and listing jobs, stuck-job and suspect searches
- ``stats``        small aggregates for the status command and metrics
- ``fleet_reads``  open work per model, oldest queued job, recent batch spans (fleet tools)
- ``gallery``      bounded pages of submissions and jobs for the web view and contact sheets
- ``selections``   chosen jobs and submissions streamed by keyset pages (export, re-roll, manifests)
- ``workers``      the worker registry: announce, beat, retire, live workers, models served
- ``webhooks``     the durable webhook outbox: enqueue, claim due deliveries, record outcomes
- ``ids``          unique id prefixes (git-style) of submissions and jobs
- ``overview``     recent submissions with counts and rates, open models, recent finishes
- ``objects``      the ``ObjectStore`` interface and key helpers
- ``stores``       ``open_store(url)`` / ``store_for(settings)``: the backend a URL names
- ``s3`` / ``local`` the two object store backends
- ``uploads``      ``UploadPool``: bounded, back-pressured background uploads

Imports only ``core``; no stage imports SQLAlchemy, they call these modules instead
(tests/test_architecture.py, docs/architecture.md).
"""

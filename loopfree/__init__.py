"""loopfree-queue: queue-driven text-to-image generation with the Loopfree (TiUE) sampler.

A job flows producer -> queue -> worker batch -> sampler -> storage:

- ``producer``: parse prompt files, record jobs in SQL, publish them to the broker.
- ``loopfree.queue``: the Celery app both sides share (JSON only, one queue per model).
- ``worker``: dynamic batches, the TiUE sampler, PNG encoding, uploads, result recording.
- ``storage``: SQL job records (SQLAlchemy + Alembic) and the object store (S3 or a folder).
"""

__version__ = "0.1.0"

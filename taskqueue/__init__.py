"""The queue between producers and workers: the Celery app (JSON messages carrying a job id, one
queue per model), bulk publishing into Redis, and the batching consumer. No SQL, no torch."""

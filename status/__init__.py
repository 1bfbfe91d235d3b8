"""What users ask about their work: a submission's or job's status, job lists, waiting, stats,
cancelling queued jobs and result manifests. Reads go through ``storage``; no torch."""

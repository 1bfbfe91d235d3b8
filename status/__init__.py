"""What users ask about their work: a submission's or job's status, job lists, waiting, stats,
cancelling queued jobs, result manifests and downloads (``queries``, ``download``), contact sheets
(``sheets``) and the read-only web view (``web``). Reads go through ``storage``; no torch."""

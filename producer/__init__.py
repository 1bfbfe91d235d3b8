"""The producer side: read prompt files into validated jobs, record them and queue them.

``producer.prompts`` parses ``.txt``, ``.jsonl`` and ``.csv`` prompt files with the shared job
validator in ``core.jobspec``. Nothing here imports torch, so ``loopfree submit`` starts fast.
"""

"""Text encodings shared between jobs: identical prompts in flight are encoded once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import torch

from worker.metrics import WorkerMetrics
from worker.sampler import TextEncoding, TiUESampler

# 77 x 768 fp16 values are ~120 KB: a thousand recent prompts cost ~120 MB of GPU memory at most.
DEFAULT_CACHE_SIZE = 1024


class TextEncoderCache:
    """Encodes each distinct prompt once and keeps the most recent ones (LRU), thread-safe.

    The cache is the one caller of ``sampler.encode_text`` in a worker, and it calls it only under
    its own lock: the tokenizer and text encoder are not safe to share between threads, but they
    are not the sampler's denoising modules either, so encoding may overlap another thread's
    ``sampler.sample`` (see ``TiUESampler``). One lock covers the entries and the encoder, so a
    batch that finds its prompts cached waits at most for one other batch's encoding
    (milliseconds), and an entry cannot be evicted between being looked up and being used.
    """

    def __init__(
        self,
        sampler: TiUESampler,
        capacity: int = DEFAULT_CACHE_SIZE,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.sampler = sampler
        self.metrics = metrics
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # prompts that went through the text encoder
        self.reused = 0  # prompts served from the cache or a batch-mate

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._entries))
            fresh: dict[str, tuple[torch.Tensor, bool]] = {}
            seconds = None
            if missing:
                started = time.perf_counter()
                encoded = self.sampler.encode_text(missing)
                seconds = time.perf_counter() - started
                for index, prompt in enumerate(missing):
                    fresh[prompt] = (encoded.hidden_states[index], encoded.truncated[index])
                self.encoded += len(missing)
            rows = []
            for prompt in prompts:
                entry = fresh[prompt] if prompt in fresh else self._entries[prompt]
                self._entries[prompt] = entry
                self._entries.move_to_end(prompt)
                rows.append(entry)
            self.reused += len(prompts) - len(missing)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        if self.metrics is not None:
            self.metrics.text_encoded(len(prompts), len(missing), seconds)
        return TextEncoding(
            hidden_states=torch.stack([hidden for hidden, _ in rows]),
            truncated=[truncated for _, truncated in rows],
        )

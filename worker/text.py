"""Text encodings shared between jobs: identical prompts in flight are encoded once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from worker.sampler import TextEncoding, TiUESampler

# 77 x 768 fp16 values are ~120 KB: a thousand recent prompts cost ~120 MB of GPU memory at most.
DEFAULT_CACHE_SIZE = 1024


class TextEncoderCache:
    """Encodes each distinct prompt once and keeps the most recent ones (LRU), thread-safe."""

    def __init__(self, sampler: TiUESampler, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        self.sampler = sampler
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # prompts that went through the text encoder
        self.reused = 0  # prompts served from the cache or a batch-mate

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._entries))
        if missing:
            fresh = self.sampler.encode_text(missing)
            with self._lock:
                for index, prompt in enumerate(missing):
                    self._entries[prompt] = (fresh.hidden_states[index], fresh.truncated[index])
                self.encoded += len(missing)
        with self._lock:
            rows = []
            for prompt in prompts:
                entry = self._entries.get(prompt)
                if entry is None:  # evicted by a concurrent batch: rare, encode it again
                    single = self.sampler.encode_text([prompt])
                    entry = (single.hidden_states[0], single.truncated[0])
                self._entries[prompt] = entry
                self._entries.move_to_end(prompt)
                rows.append(entry)
            self.reused += len(prompts) - len(missing)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return TextEncoding(
            hidden_states=torch.stack([hidden for hidden, _ in rows]),
            truncated=[truncated for _, truncated in rows],
        )

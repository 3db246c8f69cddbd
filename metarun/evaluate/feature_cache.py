"""Features of frozen encoders, kept on disk and reused by later runs (every job of a frozen sweep
encodes the same test sentences otherwise).

An entry is the (M, D) float32 features of M examples, keyed by a digest of everything that decides
them: the encoder's weights and buffers, its class, name, pooling, normalisation and tokenizer
(max_length, entity markers, vocabulary size), the device type and autocast dtype, and the examples'
texts (with relation tokens and entity spans, and a second text) in order. Different weights (a
trained encoder) or different sentences give a different key, so an entry can never be read for the
wrong features.

Entries are written atomically (temporary file, fsync, rename), so concurrent sweep jobs never see
half a file; a file that cannot be read is treated as missing and written again. The folder is kept
under `max_gb`: after each write the least recently used entries (by modification time, refreshed on
every hit) are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from metarun.tracking.files import atomic_write

log = logging.getLogger("metarun")


def default_dir() -> Path:
    root = os.environ.get("METARUN_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "metarun") / "features"


class FeatureCache:
    """`get(encoder, examples, device, dtype)` -> cached features or None; `put(...)` stores them."""

    def __init__(self, folder: str | Path | None = None, max_gb: float = 2.0):
        self.folder = Path(folder).expanduser() if folder else default_dir()
        self.max_bytes = int(max_gb * 2**30)
        self.hits = self.misses = 0

    # -- keys ---------------------------------------------------------------------------------------
    @staticmethod
    def weights_digest(encoder: torch.nn.Module) -> str:
        """Digest of every parameter and buffer (names, shapes, dtypes, bytes), taken at every lookup
        (about 0.1 s for MiniLM's 22M parameters), so changed weights can never hit an old entry."""
        h = hashlib.blake2b(digest_size=16)
        for name, t in sorted(encoder.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def key(self, encoder, examples, device: torch.device, dtype: torch.dtype | None) -> str:
        tok = encoder.tokenize
        setup = {
            "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}", "name": encoder.name,
            "pooling": getattr(encoder, "pooling", None), "normalize": getattr(encoder, "normalize", None),
            "max_length": getattr(tok, "max_length", None), "markers": getattr(tok, "entity_markers", None),
            "vocab": len(tok.tokenizer) if hasattr(tok, "tokenizer") else None,
            "device": device.type, "autocast": str(dtype), "weights": self.weights_digest(encoder),
        }
        h = hashlib.blake2b(json.dumps(setup, sort_keys=True).encode(), digest_size=20)
        for e in examples:
            h.update(json.dumps([e.text, e.text_pair, e.tokens, e.head, e.tail]).encode())
            h.update(b"\n")
        return h.hexdigest()

    # -- entries ------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def get(self, key: str, rows: int) -> torch.Tensor | None:
        path = self.path(key)
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(features, torch.Tensor) or features.ndim != 2 or len(features) != rows:
                raise ValueError(f"holds {type(features).__name__}, not ({rows}, D) features")
            os.utime(path)  # recently used: evicted last
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as e:  # a damaged entry is a miss; it is written again
            log.warning("feature cache: %s is unreadable (%s: %s); encoding again", path, type(e).__name__, e)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        try:
            atomic_write(self.path(key), lambda f: torch.save(features.detach().float().cpu().contiguous(), f))
            self.evict()
        except OSError as e:  # a full or read-only disk costs the cache, never the run
            log.warning("feature cache: could not write %s (%s); continuing without it", self.path(key), e)

    def evict(self) -> None:
        """Remove least recently used entries until the folder holds at most `max_bytes`."""
        entries = []
        for p in self.folder.glob("*.pt"):
            try:
                st = p.stat()
            except FileNotFoundError:  # another job evicted it
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

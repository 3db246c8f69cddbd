"""Features of frozen encoders, kept on disk and reused by later runs (every job of a frozen sweep
encodes the same test sentences otherwise).

An entry is the (M, D) float32 features of M examples, keyed by a digest of everything that decides
them: the encoder's weights and buffers and its `cache_identity()` settings (class, name, pooling,
normalisation, tokenizer), the device type and autocast dtype, and the examples' texts (with
relation tokens and entity spans, and a second text) in order. Different weights (a trained
encoder) or different sentences give a different key, so an entry can never be read for the wrong
features.

Every entry carries its key and a digest of its bytes (shape, dtype and values, in order), written
with it and checked on every read: a file that is cut short, altered in any byte, reordered, or
written for another key is a miss. It is reported once (naming the file), encoded again and
rewritten; it is never used. Cache trouble costs the cache, never the run: a cache folder that is
a file, cannot be written, or fills up is reported once and the run goes on without the cache.

Entries are written atomically (temporary file, fsync, rename), so concurrent sweep jobs never see
half a file. The folder is kept under `max_gb`: after each write the least recently used entries
(by modification time, refreshed on every hit) are removed; temporary files a killed write left
behind count towards the bound and are removed once they are older than `STALE_TMP_S`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from metarun.files import atomic_write

log = logging.getLogger("metarun")

FORMAT = 2  # entries of format 1 (a bare tensor, no digest) are misses and are written again
STALE_TMP_S = 600  # a temporary file this old is no live write (an entry takes well under a second)


def default_dir() -> Path:
    root = os.environ.get("METARUN_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "metarun") / "features"


def content_digest(key: str, features: torch.Tensor) -> str:
    """Digest of an entry: its key, shape, dtype and every byte of the features, in order."""
    t = features.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{key}:{tuple(t.shape)}:{t.dtype}".encode(), digest_size=20)
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """`get(key, rows)` -> verified cached features or None; `put(key, features)` stores them."""

    def __init__(self, folder: str | Path | None = None, max_gb: float = 2.0):
        self.folder = Path(folder).expanduser() if folder else default_dir()
        self.max_bytes = int(max_gb * 2**30)
        self.hits = self.misses = 0
        self.enabled = True  # False once the folder proved unusable: the run goes on without the cache
        self._swept = False
        self._warned: set[str] = set()

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
        setup = {**encoder.cache_identity(), "device": device.type, "autocast": str(dtype),
                 "weights": self.weights_digest(encoder)}
        h = hashlib.blake2b(json.dumps(setup, sort_keys=True, default=str).encode(), digest_size=20)
        for e in examples:
            h.update(json.dumps([e.text, e.text_pair, e.tokens, e.head, e.tail]).encode())
            h.update(b"\n")
        return h.hexdigest()

    # -- entries ------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def get(self, key: str, rows: int) -> torch.Tensor | None:
        """The entry's features if it is there and intact, else None (a miss)."""
        if not self._usable():
            return None
        path = self.path(key)
        try:
            features = self._read(path, key, rows)
            os.utime(path)  # recently used: evicted last
        except FileNotFoundError:
            self.misses += 1
            return None
        except NotADirectoryError as e:
            self._disable(f"{self.folder} is not a folder ({e.strerror})")
            return None
        except Exception as e:  # damaged, altered or foreign: a miss, never used; encoded and written again
            self._warn(str(path), f"feature cache: {path} is unusable ({type(e).__name__}: {e}); encoding again")
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return features

    @staticmethod
    def _read(path: Path, key: str, rows: int) -> torch.Tensor:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise ValueError(f"not a metarun feature-cache entry of format {FORMAT}")
        features = entry.get("features")
        if entry.get("key") != key:
            raise ValueError("it was written for another key")
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or len(features) != rows:
            raise ValueError(f"holds {type(features).__name__}, not ({rows}, D) features")
        if entry.get("digest") != content_digest(key, features):
            raise ValueError("its contents do not match the digest written with them")
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        if not self._usable():
            return
        features = features.detach().float().cpu().contiguous()
        entry = {"format": FORMAT, "key": key, "digest": content_digest(key, features), "features": features}
        try:
            atomic_write(self.path(key), lambda f: torch.save(entry, f))
            self.evict()
        except OSError as e:  # a full or read-only disk costs the cache, never the run
            self._disable(f"could not write {self.path(key)} ({e.strerror or e})")

    def evict(self) -> None:
        """Remove least recently used entries until the folder holds at most `max_bytes`, counting the
        temporary files of writes in flight."""
        entries, in_flight = [], 0
        for p in self.folder.glob("*.pt"):
            with contextlib.suppress(FileNotFoundError):  # another job evicted it
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
        for p in self.folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                in_flight += p.stat().st_size
        total = in_flight + sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    # -- the folder ---------------------------------------------------------------------------------
    def _usable(self) -> bool:
        """On first use: a folder that is a file turns the cache off; temporary files that killed
        writes left behind are removed."""
        if self.enabled and not self._swept:
            self._swept = True
            if self.folder.exists() and not self.folder.is_dir():
                self._disable(f"{self.folder} is not a folder")
            else:
                self.remove_stale_tmp()
        return self.enabled

    def remove_stale_tmp(self) -> int:
        """Remove temporary files older than STALE_TMP_S (left by killed writes); returns how many."""
        removed, now = 0, time.time()
        try:
            for p in self.folder.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if now - p.stat().st_mtime > STALE_TMP_S:
                        p.unlink()
                        removed += 1
        except OSError as e:
            log.debug("feature cache: could not sweep %s (%s)", self.folder, e)
        if removed:
            log.info("feature cache: removed %d temporary file(s) left by killed writes in %s", removed, self.folder)
        return removed

    def _disable(self, why: str) -> None:
        self.enabled = False
        self._warn("folder", f"feature cache: {why}; the run goes on without the cache (feature_cache.dir=... "
                             f"names another folder, feature_cache.enabled=false turns it off)")

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message)

"""An embedding cache keyed by content hash + model fingerprint, so eval reruns and sweeps skip the embedder.

:class:`CachedEmbedder` has the embedder's ``embed(items, instruction, dim)`` signature and is handed to the
pipeline and the knowledge-base importer in its place. It stores full-size vectors and applies the Matryoshka
cut on the way out, so one embedding pass serves every dimension of an MRL sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rag.models.embedder import mrl_truncate, normalise_instruction
from rag.models.protocols import EmbeddingModel, Item

logger = logging.getLogger(__name__)


class Uncacheable(Exception):
    """An item whose content cannot be hashed (e.g. a live stream); it is embedded every time."""


def model_fingerprint(embedder: Any) -> str:
    """Name, config, dtype, device type, vision budget and a slice of the weights.

    The weight slice tells apart two random checkpoints saved to the same path; config and budget change vectors
    without changing the name.
    """
    h = hashlib.sha256()
    h.update(str(getattr(embedder, "name", type(embedder).__name__)).encode())
    model = getattr(embedder, "model", None)
    if model is not None:
        cfg = getattr(model, "config", None)
        if cfg is not None:
            h.update(cfg.to_json_string(use_diff=False).encode())
        try:
            import torch

            params = list(model.parameters())
            h.update(str(sum(p.numel() for p in params)).encode())
            with torch.no_grad():
                for p in params[:2] + params[-2:]:
                    h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
            h.update(f"{params[0].dtype}|{params[0].device.type}".encode())
        except Exception as e:  # noqa: BLE001 - not a torch model: name + config must do
            logger.debug("no weight fingerprint for %s: %s", type(model).__name__, e)
    budget = getattr(embedder, "budget", None)
    if budget is not None and hasattr(budget, "model_dump_json"):
        h.update(budget.model_dump_json().encode())
    h.update(str(getattr(embedder, "max_length", "")).encode())
    return h.hexdigest()[:24]


class _FileHashes:
    """sha256 of files, remembered by (path, size, mtime) so a query image is hashed once per process."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._memo:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._memo[key] = h.hexdigest()
        return self._memo[key]


class EmbeddingCache:
    """SQLite table ``key -> float32 vector``; safe to share between processes (WAL, one connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, model TEXT NOT NULL, dim INTEGER NOT NULL, vec BLOB NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        conn = self._conn()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i:i + 500])
            rows = conn.execute(f"SELECT key, dim, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, dim, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape[0] == dim:
                    out[key] = vec
        return out

    def put_many(self, model: str, entries: dict[str, np.ndarray]) -> None:
        if not entries:
            return
        rows = [(k, model, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in entries.items()]
        with self._conn() as c:
            c.executemany("INSERT OR REPLACE INTO emb (key, model, dim, vec) VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class CachedEmbedder:
    """Drop-in for :class:`rag.models.embedder.Embedder` that answers repeated items from an :class:`EmbeddingCache`.

    ``stats`` counts cache hits, misses and calls that reached the real embedder (``computed`` items), which is
    how the eval report shows that a rerun did not embed anything.
    """

    def __init__(self, embedder: EmbeddingModel, cache: EmbeddingCache, model_id: str | None = None) -> None:
        self.embedder = embedder
        self.cache = cache
        self.model_id = model_id or model_fingerprint(embedder)
        self._hash_file = _FileHashes()
        self.stats = {"hits": 0, "misses": 0, "uncacheable": 0, "embed_calls": 0}

    def __getattr__(self, name: str) -> Any:  # device, budget... of the wrapped embedder
        if name == "embedder":
            raise AttributeError(name)
        return getattr(self.embedder, name)

    # the EmbeddingModel contract (rag.models.protocols), spelled out so type checkers see it
    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def dim(self) -> int:
        return self.embedder.dim

    # -- keys -----------------------------------------------------------------------------------------------------
    def _media(self, value: Any) -> Any:
        from PIL import Image

        if isinstance(value, (list, tuple)):
            return [self._media(v) for v in value]
        if isinstance(value, Path) or (isinstance(value, str) and not value.startswith(("http://", "https://", "data:"))):
            p = Path(str(value).removeprefix("file://"))
            if not p.is_file():
                raise Uncacheable(f"not a file: {value}")
            return "sha256:" + self._hash_file(p)
        if isinstance(value, (bytes, bytearray)):
            return "sha256:" + hashlib.sha256(value).hexdigest()
        if isinstance(value, Image.Image):
            return "pil:" + hashlib.sha256(f"{value.mode}{value.size}".encode() + value.tobytes()).hexdigest()
        raise Uncacheable(f"cannot hash {type(value).__name__}")

    def key(self, item: dict[str, Any] | str, instruction: str | None = None) -> str:
        """Content key: model fingerprint, normalised instruction, text and media content hashes."""
        item = {"text": item} if isinstance(item, str) else item
        default = getattr(self.embedder, "default_instruction", "")
        canon = {
            "model": self.model_id,
            "instruction": normalise_instruction(item.get("instruction") or instruction, default) if default else (item.get("instruction") or instruction),
            "text": item.get("text"),
            "image": self._media(item["image"]) if item.get("image") is not None else None,
            "video": self._media(item["video"]) if item.get("video") is not None else None,
        }
        return hashlib.sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    # -- the embedder API -----------------------------------------------------------------------------------------
    def embed(self, items: Iterable[Item | str], instruction: str | None = None, dim: int | None = None,
              batch_size: int | None = 8, progress: bool = False, window: int = 64) -> np.ndarray:
        items = [{"text": it} if isinstance(it, str) else it for it in items]
        full = int(self.embedder.dim)
        if not items:
            return np.zeros((0, dim or full), dtype=np.float32)
        keys: list[str | None] = []
        for it in items:
            try:
                keys.append(self.key(it, instruction))
            except Uncacheable as e:
                logger.debug("not caching an item: %s", e)
                keys.append(None)
        found = self.cache.get_many([k for k in keys if k is not None])
        todo = [i for i, k in enumerate(keys) if k is None or k not in found]
        self.stats["hits"] += len(items) - len(todo)
        self.stats["misses"] += sum(1 for i in todo if keys[i] is not None)
        self.stats["uncacheable"] += sum(1 for i in todo if keys[i] is None)
        out = np.zeros((len(items), full), dtype=np.float32)
        for i, k in enumerate(keys):
            if k is not None and k in found:
                out[i] = found[k]
        if todo:
            self.stats["embed_calls"] += 1
            vecs = self.embedder.embed([items[i] for i in todo], instruction=instruction, dim=None,
                                       batch_size=batch_size, progress=progress, window=window)
            out[todo] = vecs
            self.cache.put_many(self.model_id, {keys[i]: vecs[j] for j, i in enumerate(todo) if keys[i] is not None})
        return mrl_truncate(out, dim)

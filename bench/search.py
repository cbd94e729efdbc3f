"""Search benchmark: index build speed, query latency and batched server throughput, all engines.

Generates a synthetic corpus (Zipf-distributed words, like natural text), builds one index per
lexical engine, times single queries (p50/p95) and batched ranking, then serves the default
engine over HTTP and measures throughput with many concurrent clients. Goals: ``query_p50_ms``
<= 2 and ``build_docs_per_s`` >= 50k on a 100k-document corpus.

    python bench/search.py --json                # 100k docs, every installed engine
    python bench/search.py --docs 20000 --dense  # smaller, plus dense and hybrid on a subset
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from toolgym.search.index import build_index, open_index
from toolgym.search.remote import HttpBackend

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sil", "dun", "ae", "qu", "zen", "bri", "hal", "mor", "pel",
              "ost", "ur", "ix", "na", "fe"]


def make_corpus(path: Path, docs: int, words_per_doc: int, seed: int) -> list[str]:
    """Write a JSONL corpus; returns queries drawn from its documents (2-4 words each)."""
    rng = np.random.default_rng(seed)
    vocab_size = 60_000
    parts = rng.integers(0, len(_SYLLABLES), size=(vocab_size, 3))
    lengths = rng.integers(2, 4, size=vocab_size)
    vocab = np.array([f"{''.join(_SYLLABLES[p] for p in row[:n])}{i % 97}"
                      for i, (row, n) in enumerate(zip(parts, lengths, strict=True))])
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.05
    p /= p.sum()
    words = vocab[rng.choice(vocab_size, size=docs * words_per_doc, p=p)].reshape(docs, words_per_doc)
    titles = vocab[rng.choice(vocab_size, size=(docs, 2))]
    with path.open("w") as fh:
        for i in range(docs):
            fh.write(json.dumps({"id": f"d{i}", "title": " ".join(titles[i]), "text": " ".join(words[i])}) + "\n")
    picks = rng.integers(0, docs, size=400)
    return [" ".join(rng.choice(words[i], size=int(rng.integers(2, 5)), replace=False)) for i in picks]


def time_queries(index, queries: list[str], k: int) -> dict[str, float]:  # noqa: ANN001
    queries = queries[:200]  # enough for a stable median; keeps slow engines to seconds
    for q in queries[:20]:  # warm caches (page cache, lazy readers)
        index.search(q, k)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q, k)
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for i in range(0, len(queries), 32):
        index.search_batch(queries[i:i + 32], k)
    batch_s = time.perf_counter() - t0
    times.sort()
    return {"query_p50_ms": round(statistics.median(times), 3), "query_p95_ms": round(times[int(0.95 * len(times))], 3),
            "batched_queries_per_s": round(len(queries) / batch_s, 1)}


async def _server_load(url: str, queries: list[str], clients: int, k: int) -> float:
    backend = HttpBackend(url, timeout_s=30)
    todo = list(queries)

    async def worker() -> None:
        while todo:
            await backend.asearch_batch([todo.pop()], k)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return len(queries) / (time.perf_counter() - t0)


def bench_server(index_dir: Path, engine: str, queries: list[str], clients: int, k: int) -> dict[str, float]:
    """Throughput of a server in its own process (as deployed), loaded by ``clients`` concurrent clients."""
    proc = subprocess.Popen([sys.executable, "-m", "toolgym.search.cli", "search", "serve", str(index_dir),
                             "--engine", engine, "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            raise RuntimeError(f"search server did not start: {line!r}")
        url = match.group()
        qps = asyncio.run(_server_load(url, queries * 3, clients, k))
        stats = HttpBackend(url).health()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"server_engine": engine, "queries_per_s": round(qps, 1), "server_clients": clients,
            "server_mean_batch": round(stats["queries"] / max(1, stats["batches"]), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=100, help="words per document")
    ap.add_argument("--engines", default="tantivy,fts5,bm25s")
    ap.add_argument("--server-engine", default=None, help="engine behind the server (default: the first)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--dense", action="store_true", help="also dense and hybrid search on a 2k-document subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    engines = [e for e in args.engines.split(",") if e == "fts5" or importlib.util.find_spec(e)]
    # Other work on the machine slows every number here: record how busy it was.
    result: dict[str, object] = {"docs": args.docs, "words_per_doc": args.words, "cpus": os.cpu_count(),
                                 "load_avg_1m_before": round(os.getloadavg()[0], 2), "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        queries = make_corpus(corpus, args.docs, args.words, args.seed)
        for name in engines:
            t0 = time.perf_counter()
            manifest = build_index(corpus, Path(tmp) / name, engines=[name])
            build_s = time.perf_counter() - t0
            with_index = open_index(Path(tmp) / name)
            row = {"build_docs_per_s": round(args.docs / build_s, 1), "build_s": round(build_s, 2),
                   **{k: round(v, 2) for k, v in manifest.stats.items()}, **time_queries(with_index, queries, args.k)}
            with_index.close()
            result["engines"][name] = row  # type: ignore[index]
            if not args.json:
                print(name, row, file=sys.stderr)
        best = args.server_engine or engines[0]
        result.update({f"{k}": v for k, v in result["engines"][best].items()  # type: ignore[index]
                       if k in ("query_p50_ms", "build_docs_per_s")}, engine=best)
        result.update(bench_server(Path(tmp) / best, best, queries, args.clients, args.k))
        if args.dense:
            result["dense"] = bench_dense(Path(tmp), corpus, queries, args.k)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def bench_dense(tmp: Path, corpus: Path, queries: list[str], k: int) -> dict[str, float]:
    subset = tmp / "subset.jsonl"
    with corpus.open() as src, subset.open("w") as dst:
        for _, line in zip(range(2000), src, strict=False):
            dst.write(line)
    t0 = time.perf_counter()
    build_index(subset, tmp / "dense", engines=["fts5"], dense=True)
    out = {"dense_docs": 2000, "dense_build_docs_per_s": round(2000 / (time.perf_counter() - t0), 1)}
    for mode in ("dense", "hybrid"):
        index = open_index(tmp / "dense", mode=mode)
        out.update({f"{mode}_{k}": v for k, v in time_queries(index, queries[:100], k).items()})
        index.close()
    return out


if __name__ == "__main__":
    sys.exit(main())

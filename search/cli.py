"""``toolgym search build|serve|query``: the search commands of the command line.

The main CLI calls :func:`add_subparsers`; ``python -m toolgym.search.cli`` runs them alone.
Every failure prints one ``error: ...`` line and exits with status 2; nothing raises to the user.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from toolgym.errors import ToolgymError


def add_subparsers(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``search`` with its ``build``, ``serve`` and ``query`` commands to a CLI's subparsers."""
    parser = subparsers.add_parser("search", help="build, serve and query search indexes")
    parser.set_defaults(func=run)  # the main CLI calls args.func(args)
    sub = parser.add_subparsers(dest="search_command", required=True)

    build = sub.add_parser("build", help="index a corpus (JSONL/JSON/Parquet/saved dataset with id, title, text)")
    build.add_argument("corpus", help="corpus file or saved dataset directory")
    build.add_argument("out", help="index directory to create")
    build.add_argument("--engine", action="append", dest="engines", metavar="NAME",
                       help="lexical engine (tantivy, fts5, bm25s; repeat for several; default: tantivy if installed)")
    build.add_argument("--dense", action="store_true", help="also embed documents for dense/hybrid search")
    build.add_argument("--dense-model", default=None, help="embedding model (default: packaged all-MiniLM-L6-v2)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index")
    build.set_defaults(search_func=main_build)

    serve = sub.add_parser("serve", help="serve an index over HTTP for many rollout workers")
    serve.add_argument("index", help="index directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8321)
    serve.add_argument("--mode", default="lexical", choices=["lexical", "dense", "hybrid"])
    serve.add_argument("--engine", default=None)
    serve.add_argument("--max-batch", type=int, default=64, help="most searches coalesced into one engine call")
    serve.add_argument("--max-wait-ms", type=float, default=1.0, help="how long a batch waits for company")
    serve.set_defaults(search_func=main_serve)

    query = sub.add_parser("query", help="search an index (or a server) from the shell")
    query.add_argument("index", help="index directory, or http://HOST:PORT of a server")
    query.add_argument("query")
    query.add_argument("-k", type=int, default=5)
    query.add_argument("--mode", default="lexical", choices=["lexical", "dense", "hybrid"])
    query.add_argument("--json", action="store_true", help="print hits as JSON")
    query.set_defaults(search_func=main_query)
    return parser


def main_build(args: argparse.Namespace) -> int:
    from toolgym.search.index import build_index

    manifest = build_index(args.corpus, args.out, engines=args.engines, dense=args.dense,
                           dense_model=args.dense_model, overwrite=args.overwrite)
    rate = manifest.num_docs / manifest.build_s if manifest.build_s else 0.0
    print(f"indexed {manifest.num_docs} documents into {args.out} with {', '.join(manifest.engines) or 'dense'}"
          f"{' + dense' if manifest.dense_model and manifest.engines else ''} in {manifest.build_s:.1f}s "
          f"({rate:,.0f} docs/s); version {manifest.version}")
    return 0


def main_serve(args: argparse.Namespace) -> int:
    from toolgym.search.server import serve

    serve(args.index, args.host, args.port, mode=args.mode, engine=args.engine, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms)
    return 0


def main_query(args: argparse.Namespace) -> int:
    from toolgym.search.client import SearchConfig, make_backend
    from toolgym.search.text import format_hits

    remote = args.index.startswith("http://")
    config = SearchConfig(backend="server" if remote else "embedded", url=args.index if remote else None,
                          index=None if remote else args.index, mode=args.mode, k=min(args.k, 50), max_k=50)
    hits = make_backend(config).search_batch([args.query], config.k)[0]
    print(json.dumps([h.to_dict() for h in hits], indent=2) if args.json else format_hits(args.query, hits))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``search`` command; typed failures become one error line and status 2."""
    try:
        return int(args.search_func(args) or 0)
    except ToolgymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken, the output directory is not writable
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toolgym")
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

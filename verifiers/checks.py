"""Reward checkers: plain functions from an episode's inputs to a score in [0, 1].

A checker's parameter names say what it needs (``answer``: the extracted final answer or
``None``; ``reference``: the task's reference, a string, a number or a list of acceptable ones;
``completion``: the final assistant text). It returns ``None`` when it does not apply (no
reference to check against), so the rubric leaves it out of the sum. Checkers never raise on
model output: empty, huge, unicode or adversarial answers score 0, they do not crash a batch.

Factories (:func:`format_check`, :func:`json_schema_check`) build checkers with a meaningful
``__name__``, which the rubric uses as the key of its score breakdown.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import selectors
import subprocess
import sys
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from toolgym.errors import ConfigError, EnvError

Reference = str | int | float | Sequence[str | int | float] | None

MAX_MATH_CHARS = 1_000  # longer answers are not parsed: LaTeX parsing and simplification get slow
MATH_TIMEOUT_S = 2  # math-verify's own limit on each parse and each comparison
MATH_DEADLINE_S = 20.0  # backstop for one check in the worker process, for hangs signals cannot stop
MAX_NUMBER_DIGITS = 400  # a longer numeral is not a plausible answer; int() would also refuse past 4300
_MAX_EXPONENT = 1_000  # "1e999999999" would build a huge Fraction


# ---------------------------------------------------------------- references and normalisation


def _references(reference: Reference) -> list[str] | None:
    """The acceptable reference strings, or ``None`` when there is nothing to check against."""
    if reference is None:
        return None
    items = [reference] if isinstance(reference, (str, int, float)) else list(reference)
    refs = [str(r).strip() for r in items if r is not None and str(r).strip()]
    return refs or None


def _unicode_math(text: str) -> str:
    # fullwidth digits, "½" and a unicode minus sign as the ASCII math-verify reads
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("\u2044", "/")


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]|_")


def _drop_punct(m: re.Match[str]) -> str:
    # SQuAD drops all punctuation; keeping a decimal point and a leading minus sign stops
    # "3.5" from equalling "35" and "-5" from equalling "5".
    s, i, ch = m.string, m.start(), m.group()
    digit_after = i + 1 < len(s) and s[i + 1].isdigit()
    if ch == "." and digit_after and i > 0 and s[i - 1].isdigit():
        return ch
    if ch == "-" and digit_after and (i == 0 or not s[i - 1].isalnum()):
        return ch
    return ""


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lowercase, no punctuation, no articles, single spaces.

    Differences from SQuAD, so numbers survive: thousands commas are dropped (``1,234`` ->
    ``1234``), a decimal point between digits and a leading minus sign are kept.

    Example:
        >>> normalize_answer("  The Eiffel-Tower! ")
        'eiffeltower'
        >>> normalize_answer("It's 3.5, not -1,234.")
        'its 3.5 not -1234'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PUNCT.sub(_drop_punct, _THOUSANDS.sub("", text))
    return " ".join(_ARTICLES.sub(" ", text).split())


# ---------------------------------------------------------------- string checks


def exact_match(answer: str | None, reference: Reference) -> float | None:
    """1.0 when the normalised answer equals a normalised reference (see :func:`normalize_answer`).

    Args:
        answer: The extracted final answer (``None`` when the model gave none).
        reference: One acceptable answer or a list of them.

    Returns:
        1.0 or 0.0; ``None`` when there is no reference. An answer that normalises to nothing
        never matches.

    Example:
        >>> exact_match("The Beatles.", ["beatles", "the fab four"])
        1.0
        >>> exact_match("3.5", "35")
        0.0
    """
    refs = _references(reference)
    if refs is None:
        return None
    if not answer:
        return 0.0
    got = normalize_answer(answer)
    return 1.0 if got and any(got == normalize_answer(r) for r in refs) else 0.0


def token_f1(answer: str | None, reference: Reference) -> float | None:
    """SQuAD token F1 between the normalised answer and the best-matching reference.

    Example:
        >>> token_f1("the red house", "red brick house")
        0.8
        >>> token_f1(None, "x")
        0.0
    """
    refs = _references(reference)
    if refs is None:
        return None
    pred = normalize_answer(answer).split() if answer else []
    if not pred:
        return 0.0
    best = 0.0
    for ref in refs:
        gold = normalize_answer(ref).split()
        same = sum((Counter(pred) & Counter(gold)).values())
        if same:
            precision, recall = same / len(pred), same / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ---------------------------------------------------------------- numbers

_NUMBER = re.compile(
    r"""(?<![\w.])                                  # not glued to a word or another number
    (?P<sign>[-+])?\s*[$€£¥₹]?\s*                  # sign, then an optional currency symbol
    (?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?P<frac>\.\d+)?
    (?:[eE](?P<exp>[-+]?\d+))?
    (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
    (?P<pct>\s*%)?
    (?![^\W\d_])                                     # "2x" or "5kg" is not a bare number""",
    re.VERBOSE,
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\}\s*\{\s*([^{}]*)\}")
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")


def _clean_numeric(text: str) -> str:
    text = _unicode_math(text)
    text = _LATEX_TEXT.sub(r" \1 ", _LATEX_FRAC.sub(r"(\1)/(\2)", text))
    for latex, plain in (("{,}", ","), ("\\!", ""), ("\\,", ""), ("\\%", "%"), ("\\$", "$"), ("\\left", ""),
                         ("\\right", ""), ("\\cdot", "*"), ("\\times", "*")):
        text = text.replace(latex, plain)
    # "(3)/(4)" from \frac: drop the grouping parentheses around plain numerals
    return re.sub(r"\((\s*[-+]?[\d.,]+\s*)\)", r"\1", text)


def parse_number(text: str | int | float | None) -> Fraction | None:
    """The one number a short answer states, exactly, or ``None``.

    Accepted: ``1234``, ``1,234`` (thousands commas), ``-3.5``, ``.5``, ``1e3``, ``3/4``,
    ``\\frac{3}{4}``, ``$5`` / ``€5`` (currency dropped), fullwidth digits, a unicode minus, and a
    number inside short text (``x = 5``, ``5 apples``). A percent sign is dropped and the number
    kept as written: ``50%`` is 50, not 0.5 (datasets state percentages that way; a rate
    written as 0.5 does not match ``50%``). Text with zero numbers or two or more (``3 or 4``,
    ``1,2``, ``3-5``) is not a number.

    Example:
        >>> parse_number("$1,234.50"), parse_number(r"\\frac{3}{4}"), parse_number("50%")
        (Fraction(2469, 2), Fraction(3, 4), Fraction(50, 1))
        >>> parse_number("3 or 4") is None, parse_number("2x") is None
        (True, True)
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return Fraction(text) if math.isfinite(text) else None
    found: list[Fraction] = []
    for m in _NUMBER.finditer(_clean_numeric(text)):
        if m.group("int") is None and m.group("frac") is None:
            continue
        value = _match_value(m)
        if value is None or found:
            return None  # an unreadable number, or a second one: ambiguous
        found.append(value)
    return found[0] if found else None


def _match_value(m: re.Match[str]) -> Fraction | None:
    digits = (m.group("int") or "0").replace(",", "") + (m.group("frac") or "")
    exp = int(m.group("exp") or 0)
    if len(digits) > MAX_NUMBER_DIGITS or abs(exp) > _MAX_EXPONENT:
        return None
    value = Fraction(digits) * Fraction(10) ** exp
    if m.group("den"):
        den = Fraction(m.group("den"))
        if den == 0 or len(m.group("den")) > MAX_NUMBER_DIGITS:
            return None
        value /= den
    return -value if m.group("sign") == "-" else value


def numeric_close(answer: str | None, reference: Reference, rel_tol: float = 1e-6,
                  abs_tol: float = 1e-9) -> float | None:
    """1.0 when the answer's number equals a reference number within tolerance.

    Numbers are read by :func:`parse_number` (so ``50%`` is 50 and ``3 or 4`` is no number).

    Returns:
        1.0 or 0.0; ``None`` when no reference is a number (the check does not apply).

    Example:
        >>> numeric_close("The total is $1,234.", "1234"), numeric_close("0.3333333", "1/3")
        (1.0, 1.0)
        >>> numeric_close("12", 13), numeric_close("42", "forty-two")
        (0.0, None)
    """
    if reference is None:
        return None
    items = [reference] if isinstance(reference, (str, int, float)) else list(reference)
    refs = [v for v in (parse_number(r) for r in items) if v is not None]
    if not refs:
        return None
    got = parse_number(answer) if isinstance(answer, str) else None
    if got is None:
        return 0.0
    return 1.0 if any(_close(got, r, rel_tol, abs_tol) for r in refs) else 0.0


def _close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
    except OverflowError:  # beyond float range and not equal: compare exactly
        return abs(a - b) <= max(Fraction(rel_tol) * max(abs(a), abs(b)), Fraction(abs_tol))


# ---------------------------------------------------------------- math (math-verify)

_WORDS = re.compile(r"[^\W\d_]+(?:\s+[^\W\d_]+)*")
_DELIMITED = ("$", "\\(", "\\[", "\\boxed")


def math_equivalent(answer: str | None, reference: Reference) -> float | None:
    r"""1.0 when the answer is mathematically equal to a reference (math-verify).

    ``\frac{1}{2}``, ``0.5`` and ``1/2`` are equal; so are ``x+1`` and ``1+x``. Plain words
    (``Paris``, ``\text{yes}``) are compared as normalised text, because sympy reads ``abc``
    as the product ``a*b*c`` and would call ``cba`` equal. Answers over
    :data:`MAX_MATH_CHARS` score 0 unparsed.

    math-verify limits its work with ``signal.alarm``, which only works in the main thread.
    In the main thread the check runs in-process with those limits (cancelling any ``SIGALRM``
    timer the caller had set); from any other thread it goes to the worker process of
    :data:`DEFAULT_MATH_VERIFIER` (its own main thread, so the limits hold there too; see
    :class:`MathVerifier`). To own that process, give a rubric ``verifier.math_equivalent`` of a
    :class:`MathVerifier` you close instead.

    Example:
        >>> math_equivalent(r"\frac{1}{2}", "0.5"), math_equivalent("1/2", r"\dfrac12")
        (1.0, 1.0)
        >>> math_equivalent("3 or 4", "3"), math_equivalent("cba", "abc")
        (0.0, 0.0)
    """
    return DEFAULT_MATH_VERIFIER.math_equivalent(answer, reference)


def _math_equivalent(answer: str | None, reference: Reference, verifier: MathVerifier) -> float | None:
    refs = _references(reference)
    if refs is None:
        return None
    answer = _unicode_math(answer.strip()) if isinstance(answer, str) else ""
    if not answer or len(answer) > MAX_MATH_CHARS:
        return 0.0
    refs = [_unicode_math(r) for r in refs]
    return 1.0 if any(_math_match(answer, ref, verifier) for ref in refs if len(ref) <= MAX_MATH_CHARS) else 0.0


def _is_words(text: str) -> bool:
    """Letters and spaces only (``\\text{}`` aside), with a run of three letters: prose, not algebra."""
    text = _strip_text(text).strip()
    return bool(_WORDS.fullmatch(text)) and re.search(r"[^\W\d_]{3}", text) is not None


def _math_match(answer: str, ref: str, verifier: MathVerifier) -> bool:
    if _is_words(answer) or _is_words(ref):
        got = normalize_answer(_strip_text(answer))
        return bool(got) and got == normalize_answer(_strip_text(ref))
    if threading.current_thread() is threading.main_thread():
        return _verify_latex(answer, ref, MATH_TIMEOUT_S)
    return verifier.verify(answer, ref)


def _strip_text(s: str) -> str:
    return _LATEX_TEXT.sub(r"\1", s)


def _verify_latex(answer: str, ref: str, timeout: int | None) -> bool:
    """math-verify on two short strings; bare ones are read as LaTeX math (``$...$``)."""
    from math_verify import parse, verify  # slow import (sympy, antlr): only when used
    from math_verify.errors import TimeoutException

    def as_math(s: str) -> str:
        return s if any(d in s for d in _DELIMITED) else f"${s}$"

    try:
        gold = parse(as_math(ref), parsing_timeout=timeout)
        pred = parse(as_math(answer), parsing_timeout=timeout)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


class MathVerifier:
    r"""Math checks whose time limits hold in any thread: a worker process it owns answers them.

    The worker (a child Python process, one JSON line in and one out per check) starts with the
    first check made outside the main thread. One that hangs past :data:`MATH_DEADLINE_S` is
    killed and the next check starts a fresh one; were none able to start, checks run in-process
    with math-verify's limits turned off. Checks from several threads are serialised (one takes
    milliseconds). :meth:`close` ends the worker for good. The module's :func:`math_equivalent`
    uses :data:`DEFAULT_MATH_VERIFIER`, closed at interpreter exit. A pickled or forked copy
    starts its own worker, ended with its process (the worker exits when its input closes).

    Example:
        >>> from toolgym.verifiers.rubric import Rubric
        >>> with MathVerifier() as verifier:
        ...     rubric = Rubric([verifier.math_equivalent])
        ...     rubric.score(answer=r"\frac{1}{2}", reference="0.5").breakdown
        {'math_equivalent': 1.0}
        >>> verifier.closed, verifier.pid
        (True, None)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._broken = False  # no worker could start: check in-process
        self._closed = False
        self._owner = os.getpid()

    def math_equivalent(self, answer: str | None, reference: Reference) -> float | None:
        """:func:`math_equivalent` with this verifier's worker; a rubric keys it ``math_equivalent``.

        Raises:
            EnvError: The verifier is closed (a rubric scores that 0 and reports the error).
        """
        self._check_open()
        return _math_equivalent(answer, reference, self)

    def verify(self, answer: str, ref: str) -> bool:
        """Whether math-verify, run in the worker, finds two short strings equal.

        Raises:
            EnvError: The verifier is closed.
        """
        self._adopt()
        with self._lock:
            self._check_open()
            for _ in range(2):  # a worker found dead (not hung) gets one fresh replacement
                if self._broken:
                    return _verify_latex(answer, ref, None)
                try:
                    reply = self._ask(answer, ref)
                except OSError:
                    self._broken = self._proc is None  # could not even start: stay in-process
                    self._stop()
                    continue
                if reply != "died":
                    return reply == "true"
            return False

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs (``None`` before the first check and once closed)."""
        proc = self._proc if self._owner == os.getpid() else None
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """End the worker (after a check in progress) and refuse later checks; idempotent."""
        self._adopt()
        with self._lock:
            self._closed = True
            self._stop()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"closed": self._closed}  # a process and a lock do not travel: the copy starts its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self._closed = bool(state.get("closed"))

    # -- the worker process ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EnvError("this MathVerifier is closed (MathVerifier.close() was called)")

    def _adopt(self) -> None:
        """In a forked child the parent's worker and lock are not ours to use or kill: start afresh."""
        if self._owner != os.getpid():
            self._owner, self._lock, self._proc = os.getpid(), threading.Lock(), None

    def _ask(self, answer: str, ref: str) -> str:
        proc = self._ensure()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps([answer, ref]) + "\n")
        proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(MATH_DEADLINE_S):
                self._stop()  # hung: this check fails, a fresh worker serves the next one
                return "timeout"
        line = proc.stdout.readline().strip()
        if not line:
            self._stop()
            return "died"
        return line

    def _ensure(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from toolgym.verifiers.checks import serve_math; serve_math()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                encoding="utf-8", bufsize=1)
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def serve_math() -> None:
    """Worker loop of :class:`MathVerifier`: ``[answer, reference]`` lines in, ``true``/``false`` out."""
    out, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        try:
            answer, ref = json.loads(line)
            ok = _verify_latex(str(answer), str(ref), MATH_TIMEOUT_S)
        except Exception:
            ok = False
        out.write("true\n" if ok else "false\n")
        out.flush()


DEFAULT_MATH_VERIFIER = MathVerifier()
"""The verifier behind :func:`math_equivalent`; its worker starts on first use and ends at exit."""
atexit.register(DEFAULT_MATH_VERIFIER.close)


# ---------------------------------------------------------------- format checks


def regex_format(completion: str | None, pattern: str | re.Pattern[str], fullmatch: bool = False) -> float:
    """1.0 when ``pattern`` is found in (or, with ``fullmatch``, spans) the completion.

    Example:
        >>> regex_format("<think>x</think> 4", r"<think>.*?</think>")
        1.0
    """
    if not isinstance(completion, str):
        return 0.0
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return 1.0 if (rx.fullmatch(completion) if fullmatch else rx.search(completion)) else 0.0


def _slug(text: str, limit: int = 32) -> str:
    return "_".join(re.findall(r"[A-Za-z0-9]+", text))[:limit].strip("_").lower()


class FormatCheck:
    """A checker ``fn(completion)``: :func:`regex_format` with a fixed, compiled pattern.

    What :func:`format_check` returns. A module-level class, not a closure, so a rubric holding
    one pickles (vector envs and worker pools send envs to other processes).

    Args:
        rx: The compiled pattern (compiled patterns pickle as their source and flags).
        fullmatch: Require the pattern to span the whole completion.
        name: The checker's ``__name__``, the key of its score in a rubric's breakdown.

    Example:
        >>> import pickle
        >>> check = pickle.loads(pickle.dumps(FormatCheck(re.compile(r"\\d"), False, "has_digit")))
        >>> check.__name__, check("a1"), check("ab")
        ('has_digit', 1.0, 0.0)
    """

    def __init__(self, rx: re.Pattern[str], fullmatch: bool, name: str):
        self.rx, self.fullmatch = rx, fullmatch
        # Instance attributes, so the rubric's getattr(fn, "__name__") names the breakdown entry.
        self.__name__ = self.__qualname__ = name
        self.__doc__ = f"1.0 when the completion {'matches' if fullmatch else 'contains'} {rx.pattern!r}."

    def __call__(self, completion: str | None) -> float:
        return regex_format(completion, self.rx, self.fullmatch)

    def __repr__(self) -> str:
        return f"<format check {self.__name__}: {self.rx.pattern!r}>"


def format_check(pattern: str, *, flags: int = re.DOTALL, fullmatch: bool = False,
                 name: str | None = None) -> Callable[[str | None], float]:
    """A checker ``fn(completion)`` for :func:`regex_format` with a fixed pattern.

    Args:
        pattern: Regular expression, compiled once here.
        flags: ``re`` flags (``DOTALL`` by default, so ``.`` spans lines).
        fullmatch: Require the pattern to span the whole completion.
        name: The checker's ``__name__`` (default ``format_`` plus the pattern's words).

    Returns:
        A :class:`FormatCheck`, which pickles.

    Raises:
        ConfigError: The pattern is not a valid regular expression.

    Example:
        >>> think = format_check(r"^<think>.*</think>", name="format_think")
        >>> think.__name__, think("<think>\\nhm\\n</think> 4"), think("4")
        ('format_think', 1.0, 0.0)
    """
    try:
        rx = re.compile(pattern, flags)
    except re.error as exc:
        raise ConfigError(f"format_check: invalid regular expression {pattern!r}: {exc}") from exc
    return FormatCheck(rx, fullmatch, name or ("format_" + (_slug(pattern) or "regex")))


_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def json_schema_check(schema: dict[str, Any], *, name: str | None = None) -> Callable[[str | None], float]:
    """A checker ``fn(answer)``: 1.0 when the answer is JSON valid against ``schema``.

    A Markdown code fence around the JSON is allowed. Invalid, too deeply nested or non-JSON
    answers score 0.

    Raises:
        ConfigError: ``schema`` is not a valid JSON schema.

    Example:
        >>> check = json_schema_check({"type": "object", "required": ["city"],
        ...                            "properties": {"city": {"type": "string"}}}, name="city_json")
        >>> check.__name__, check('{"city": "Oslo"}'), check('{"city": 3}'), check("Oslo")
        ('city_json', 1.0, 0.0, 0.0)
    """
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"json_schema_check: invalid JSON schema: {exc.message}") from exc
    validator = cls(schema)

    def check(answer: str | None) -> float:
        if not isinstance(answer, str):
            return 0.0
        text = answer.strip()
        fenced = _FENCE.match(text)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
            return 1.0 if validator.is_valid(value) else 0.0
        except (ValueError, RecursionError):
            return 0.0

    title = schema.get("title") if isinstance(schema, dict) else None
    check.__name__ = check.__qualname__ = name or ("json_schema_" + _slug(title) if isinstance(title, str)
                                                   and _slug(title) else "json_schema")
    check.__doc__ = "1.0 when the answer is JSON that fits the schema."
    return check

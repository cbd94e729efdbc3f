"""``toolgym/PythonCode-v0``: write a Python function that passes hidden unit tests.

Each task names a function and describes it; the model may try code with the ``python`` and
``shell`` sandbox tools and ends with its solution in a ```python block. The rubric runs the
solution in a fresh sandboxed process and calls it on hidden inputs; the reward is the fraction
of calls whose ``repr`` matches the expected one. The harness prints its results after a per-call
random marker and the host compares them with expected values it never sends, so printing a fake
"all passed" line earns nothing: matching the outputs requires computing them.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.sandbox_tools import SANDBOX_TOOLS, SandboxResources, used_python
from toolgym.envs.task import ListTasks, Task
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool
from toolgym.sandboxes.shared import SandboxPools
from toolgym.verifiers.rubric import Rubric


@dataclass(frozen=True)
class CodeTask:
    """One coding task: the function to write, a reference solution and hidden tests."""

    name: str
    signature: str
    description: str
    solution: str
    tests: tuple[tuple[str, str], ...]  # (call expression, repr of the expected result)
    split: str = "train"


def _t(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(pairs)


TASKS: tuple[CodeTask, ...] = (
    CodeTask("add", "add(a, b)", "Return the sum of two integers.",
             "def add(a, b):\n    return a + b", _t(("add(2, 3)", "5"), ("add(-4, 4)", "0"), ("add(10**12, 1)", "1000000000001"))),
    CodeTask("reverse_string", "reverse_string(s)", "Return the string reversed.",
             "def reverse_string(s):\n    return s[::-1]", _t(("reverse_string('abc')", "'cba'"), ("reverse_string('')", "''"), ("reverse_string('racecar')", "'racecar'"))),
    CodeTask("is_palindrome", "is_palindrome(s)", "Return True if s reads the same backwards, ignoring case and non-letters.",
             "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalpha()]\n    return t == t[::-1]",
             _t(("is_palindrome('A man, a plan, a canal: Panama')", "True"), ("is_palindrome('abc')", "False"), ("is_palindrome('')", "True"))),
    CodeTask("fizzbuzz", "fizzbuzz(n)", "Return a list of strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' for 5, 'FizzBuzz' for both, else the number.",
             "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        s = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')\n        out.append(s or str(i))\n    return out",
             _t(("fizzbuzz(5)", "['1', '2', 'Fizz', '4', 'Buzz']"), ("fizzbuzz(15)[-1]", "'FizzBuzz'"), ("fizzbuzz(0)", "[]"))),
    CodeTask("factorial", "factorial(n)", "Return n! for n >= 0.",
             "def factorial(n):\n    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r",
             _t(("factorial(0)", "1"), ("factorial(5)", "120"), ("factorial(20)", "2432902008176640000"))),
    CodeTask("fibonacci", "fibonacci(n)", "Return the n-th Fibonacci number with fibonacci(0) == 0 and fibonacci(1) == 1.",
             "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
             _t(("fibonacci(0)", "0"), ("fibonacci(10)", "55"), ("fibonacci(90)", "2880067194370816120"))),
    CodeTask("count_vowels", "count_vowels(s)", "Return how many vowels (a, e, i, o, u; any case) s contains.",
             "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
             _t(("count_vowels('Hello World')", "3"), ("count_vowels('xyz')", "0"), ("count_vowels('AEIOUaeiou')", "10"))),
    CodeTask("is_prime", "is_prime(n)", "Return True if n is a prime number.",
             "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True",
             _t(("is_prime(1)", "False"), ("is_prime(97)", "True"), ("is_prime(91)", "False"), ("is_prime(7919)", "True"))),
    CodeTask("gcd", "gcd(a, b)", "Return the greatest common divisor of two non-negative integers.",
             "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
             _t(("gcd(12, 18)", "6"), ("gcd(17, 5)", "1"), ("gcd(0, 9)", "9"))),
    CodeTask("flatten", "flatten(items)", "Flatten arbitrarily nested lists into one flat list.",
             "def flatten(items):\n    out = []\n    for x in items:\n        if isinstance(x, list):\n            out.extend(flatten(x))\n        else:\n            out.append(x)\n    return out",
             _t(("flatten([1, [2, [3, [4]]], 5])", "[1, 2, 3, 4, 5]"), ("flatten([])", "[]"), ("flatten([[[]]])", "[]"))),
    CodeTask("word_count", "word_count(text)", "Return a dict mapping each lower-cased word (split on whitespace) to its count.",
             "def word_count(text):\n    counts = {}\n    for w in text.lower().split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
             _t(("word_count('a b A')", "{'a': 2, 'b': 1}"), ("word_count('')", "{}"))),
    CodeTask("second_largest", "second_largest(nums)", "Return the second largest distinct value in nums, or None if there is none.",
             "def second_largest(nums):\n    s = sorted(set(nums))\n    return s[-2] if len(s) > 1 else None",
             _t(("second_largest([3, 1, 4, 4])", "3"), ("second_largest([5, 5])", "None"), ("second_largest([-1, -2])", "-2"))),
    CodeTask("run_length", "run_length(s)", "Run-length encode s: 'aaabcc' -> 'a3b1c2'.",
             "def run_length(s):\n    out = []\n    i = 0\n    while i < len(s):\n        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out.append(f'{s[i]}{j - i}')\n        i = j\n    return ''.join(out)",
             _t(("run_length('aaabcc')", "'a3b1c2'"), ("run_length('')", "''"), ("run_length('z')", "'z1'"))),
    CodeTask("balanced", "balanced(s)", "Return True if the brackets ()[]{} in s are balanced.",
             "def balanced(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack",
             _t(("balanced('([]{})')", "True"), ("balanced('(]')", "False"), ("balanced('((')", "False"), ("balanced('a(b)c')", "True"))),
    CodeTask("anagrams", "anagrams(a, b)", "Return True if a and b are anagrams of each other (case-insensitive, spaces ignored).",
             "def anagrams(a, b):\n    norm = lambda s: sorted(s.replace(' ', '').lower())\n    return norm(a) == norm(b)",
             _t(("anagrams('Listen', 'Silent')", "True"), ("anagrams('abc', 'abd')", "False"), ("anagrams('dormitory', 'dirty room')", "True"))),
    CodeTask("chunk", "chunk(items, size)", "Split a list into consecutive chunks of length size (the last may be shorter).",
             "def chunk(items, size):\n    return [items[i:i + size] for i in range(0, len(items), size)]",
             _t(("chunk([1, 2, 3, 4, 5], 2)", "[[1, 2], [3, 4], [5]]"), ("chunk([], 3)", "[]"))),
    CodeTask("digits_sum", "digits_sum(n)", "Return the sum of the decimal digits of the integer n (ignore the sign).",
             "def digits_sum(n):\n    return sum(int(c) for c in str(abs(n)))",
             _t(("digits_sum(1234)", "10"), ("digits_sum(-909)", "18"), ("digits_sum(0)", "0"))),
    CodeTask("caesar", "caesar(s, k)", "Shift each ASCII letter of s by k places (wrapping, keeping case); leave other characters.",
             "def caesar(s, k):\n    out = []\n    for c in s:\n        if c.isascii() and c.isalpha():\n            base = ord('a') if c.islower() else ord('A')\n            out.append(chr((ord(c) - base + k) % 26 + base))\n        else:\n            out.append(c)\n    return ''.join(out)",
             _t(("caesar('abc', 1)", "'bcd'"), ("caesar('Zz!', 1)", "'Aa!'"), ("caesar('hello', -3)", "'ebiil'"))),
    CodeTask("merge_sorted", "merge_sorted(a, b)", "Merge two sorted lists into one sorted list.",
             "def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]",
             _t(("merge_sorted([1, 4, 9], [2, 3, 10])", "[1, 2, 3, 4, 9, 10]"), ("merge_sorted([], [1])", "[1]")),
             split="eval"),
    CodeTask("roman", "roman(n)", "Convert 1 <= n <= 3999 to a Roman numeral.",
             "def roman(n):\n    vals = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n    out = ''\n    for v, s in vals:\n        while n >= v:\n            out += s\n            n -= v\n    return out",
             _t(("roman(1994)", "'MCMXCIV'"), ("roman(4)", "'IV'"), ("roman(3999)", "'MMMCMXCIX'")), split="eval"),
    CodeTask("binary_search", "binary_search(items, x)", "Return the index of x in the sorted list items, or -1.",
             "def binary_search(items, x):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if items[mid] == x:\n            return mid\n        if items[mid] < x:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1",
             _t(("binary_search([1, 3, 5, 7], 5)", "2"), ("binary_search([1, 3, 5, 7], 4)", "-1"), ("binary_search([], 1)", "-1")),
             split="eval"),
    CodeTask("transpose", "transpose(matrix)", "Return the transpose of a rectangular matrix given as a list of rows.",
             "def transpose(matrix):\n    return [list(row) for row in zip(*matrix)]",
             _t(("transpose([[1, 2, 3], [4, 5, 6]])", "[[1, 4], [2, 5], [3, 6]]"), ("transpose([])", "[]")), split="eval"),
    CodeTask("unique_in_order", "unique_in_order(items)", "Return the items without duplicates, keeping first occurrences in order.",
             "def unique_in_order(items):\n    seen, out = set(), []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out",
             _t(("unique_in_order([3, 1, 3, 2, 1])", "[3, 1, 2]"), ("unique_in_order('abca')", "['a', 'b', 'c']")), split="eval"),
    CodeTask("title_case", "title_case(s)", "Capitalise the first letter of every whitespace-separated word and lower-case the rest.",
             "def title_case(s):\n    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split())",
             _t(("title_case('hELLO wORLD')", "'Hello World'"), ("title_case('')", "''")), split="eval"),
)

SYSTEM_PROMPT = (
    "You write Python functions. You can run code with the `python` tool (a persistent Python session) and "
    "the `shell` tool. When you are done, reply with the complete function definition in a single "
    "```python code block and no tool call."
)
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_HARNESS = """
import os, sys
_cwd = os.getcwd()
sys.path[:] = [p for p in sys.path if p not in ('', '.', _cwd)]  # no module the model wrote is imported
_calls = {calls!r}
_ns = {{"__name__": "solution"}}
try:
    exec(compile({solution!r}, "solution.py", "exec"), _ns)
    _loaded = True
except BaseException as _e:
    _loaded = False
_out = []
for _c in _calls:
    try:
        _out.append(repr(eval(_c, _ns)) if _loaded else "<not loaded>")
    except BaseException as _e:
        _out.append("<" + type(_e).__name__ + ">")
print()
print({marker!r} + __import__("json").dumps(_out))
"""


def extract_code(completion: str) -> str | None:
    """The last ```python block of a reply, or ``None``.

    Example:
        >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```")
        'def f():\\n    return 1\\n'
    """
    blocks = _CODE_BLOCK.findall(completion or "")
    return blocks[-1] if blocks else None


def task_prompt(task: CodeTask) -> str:
    return f"Write a Python function `{task.signature}`. {task.description}"


def make_task(index: int, task: CodeTask) -> Task:
    return Task(id=f"pycode-{task.name}", prompt=task_prompt(task), answer=task.solution, split=task.split,
                metadata={"function": task.name, "tests": [list(t) for t in task.tests], "index": index})


def run_hidden_tests(sandbox: Any, solution: str, tests: list[list[str]], timeout: float = 10.0) -> float:
    """Fraction of hidden test calls whose result ``repr`` matches, run in a fresh sandboxed process."""
    marker = f"@@result-{secrets.token_hex(16)}@@"
    calls = [call for call, _ in tests]
    code = _HARNESS.format(calls=calls, solution=solution, marker=marker)
    result = sandbox.run(code, mode="python", timeout=timeout)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(marker)]
    if not lines:
        return 0.0
    try:
        got = json.loads(lines[-1][len(marker):])
    except ValueError:
        return 0.0
    if not isinstance(got, list) or len(got) != len(tests):
        return 0.0
    return sum(g == expected for g, (_, expected) in zip(got, tests, strict=True)) / len(tests)


def hidden_tests(completion: str, task: Task, state: EpisodeState) -> float:
    """Reward: fraction of hidden tests the final ```python block passes (0 without a block)."""
    code = extract_code(completion)
    sandbox = state.resources.get("sandbox")
    if code is None or sandbox is None:
        return 0.0
    return run_hidden_tests(sandbox, code, task.metadata["tests"])


class PythonCodeEnv(SandboxResources, ToolEnv):
    """Write a function that passes hidden unit tests, with a sandboxed Python session to try code.

    Args:
        sandbox_config: :class:`SandboxConfig` of the episodes' sandbox pool (default: auto backend).
        sandbox_pool: An open pool to take episode sandboxes from instead.
        sandbox_pools: The :class:`SandboxPools` to take the ``sandbox_config`` pool from
            (default: the process-wide ones); closing it closes the env's pool.
        **kwargs: :class:`ToolEnv` options (``split``, ``max_turns`` ...).
    """

    system_prompt = SYSTEM_PROMPT
    default_max_turns = 6
    blocking_rubric = True  # grading runs the hidden tests in the sandbox

    def __init__(self, *, sandbox_config: SandboxConfig | None = None, sandbox_pool: ExecutorPool | None = None,
                 sandbox_pools: SandboxPools | None = None, **kwargs: Any):
        self.sandbox_config = sandbox_config
        self.sandbox_pool = sandbox_pool
        self.sandbox_pools = sandbox_pools
        super().__init__(**kwargs)

    def load_tasks(self, split: str) -> ListTasks:
        return ListTasks([make_task(i, t) for i, t in enumerate(TASKS) if t.split == split])

    def make_tools(self) -> list[Any]:
        return list(SANDBOX_TOOLS)

    def make_rubric(self) -> Rubric:
        return Rubric([hidden_tests, (used_python, 0.0)])

    def demonstration(self, task: Task) -> list[dict[str, Any]]:
        """Try the reference solution on the visible examples with the python tool, then answer."""
        first_call, expected = task.metadata["tests"][0]
        check = f"{task.answer}\n\nprint({first_call} == {expected})"
        call = json.dumps({"name": "python", "arguments": {"code": check}})
        return [*self.initial_messages(task),
                {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                {"role": "tool", "tool_call_id": "call_0", "name": "python", "content": "True\n"},
                {"role": "assistant", "content": f"```python\n{task.answer}\n```"}]

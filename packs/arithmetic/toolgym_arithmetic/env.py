"""``toolgym/Arithmetic-v0``: multi-step arithmetic word problems solved with a calculator tool.

Problems are generated from a seed per (split, index), so every task is reproducible and the
train and eval splits never share a seed. The calculator evaluates through ``ast`` with a fixed
set of operators and size limits: there is no ``eval``, so there is nothing to escape.
"""

from __future__ import annotations

import ast
import json
import operator
import random
from fractions import Fraction
from typing import Any

from toolgym.envs.base import ToolEnv
from toolgym.envs.task import Task
from toolgym.envs.tools import tool
from toolgym.verifiers.checks import numeric_close
from toolgym.verifiers.rubric import Rubric

SPLIT_SIZES = {"train": 5000, "eval": 200}
_SPLIT_SALT = {"train": 0x5EED, "eval": 0xE7A1}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
MAX_EXPRESSION_CHARS = 500
MAX_MAGNITUDE = 10**15


def _eval_node(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval_node(node.operand)
        return v if isinstance(node.op, ast.UAdd) else -v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > 64:
                raise ValueError("exponent must be an integer between -64 and 64")
            if abs(left) > 10**6:
                raise ValueError("base too large for exponentiation")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ZeroDivisionError("division by zero")
        result = _OPS[type(node.op)](left, right)
        result = Fraction(result)
        if abs(result) > MAX_MAGNITUDE:
            raise ValueError("result too large")
        return result
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


def format_number(value: Fraction) -> str:
    """Integers print as integers; other values to 6 decimal places, trailing zeros removed.

    Example:
        >>> format_number(Fraction(7, 2)), format_number(Fraction(10))
        ('3.5', '10')
    """
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


@tool(timeout=None)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses.

    Args:
        expression: The expression, e.g. "(12 + 30) * 4".
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    return format_number(_eval_node(tree))


_ITEMS = ["apples", "books", "coins", "marbles", "stamps", "pencils", "cards", "shells", "tickets", "bolts"]
_NAMES = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]


def _problem(rng: random.Random) -> tuple[str, str, str]:
    """One word problem: (prompt, expression, answer). Two to four operations."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(12, 480)
    text = [f"{name} has {value} {item}."]
    expr = str(value)
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["buy", "lose", "boxes", "share"])
        if kind == "buy":
            n = rng.randint(7, 250)
            text.append(f"Then {name} gets {n} more.")
            expr, value = f"({expr} + {n})", value + n
        elif kind == "lose" and value > 20:
            n = rng.randint(1, value - 1)
            text.append(f"Then {name} gives away {n}.")
            expr, value = f"({expr} - {n})", value - n
        elif kind == "boxes":
            b, per = rng.randint(2, 9), rng.randint(3, 40)
            text.append(f"Then {name} buys {b} boxes with {per} {item} each.")
            expr, value = f"({expr} + {b} * {per})", value + b * per
        else:
            k = rng.choice([d for d in (2, 3, 4, 5, 6) if value % d == 0] or [1])
            if k == 1:
                n = rng.randint(2, 12)
                text.append(f"Then {name}'s stock is multiplied by {n}.")
                expr, value = f"({expr} * {n})", value * n
            else:
                text.append(f"Then {name} splits them equally into {k} piles and keeps one pile.")
                expr, value = f"({expr} / {k})", value // k
    text.append(f"How many {item} does {name} have now?")
    return " ".join(text), expr[1:-1] if expr.startswith("(") else expr, str(value)


def _easy_problem(rng: random.Random, split: str) -> tuple[str, str, str]:
    """One operation on two 2-digit numbers: small enough for a tiny model trained on a CPU.

    The space is small (24,300 problems), so it is partitioned: an eval problem never appears in
    train, whatever the split sizes.
    """
    while True:
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-*")
        if ((a * 97 + b * 31 + ord(op)) % 8 == 0) == (split == "eval"):
            break
    expr = f"{a} {op} {b}"
    return f"Compute {expr}.", expr, str({"+": a + b, "-": a - b, "*": a * b}[op])


class ArithmeticTasks:
    """A deterministic, lazily generated task source for one split.

    ``difficulty=1`` gives one-operation problems ("Compute 37 + 45."); ``2`` (default) gives
    multi-step word problems.
    """

    def __init__(self, split: str, size: int | None = None, difficulty: int = 2):
        if split not in _SPLIT_SALT:
            raise ValueError(f"unknown split '{split}'; choose from {', '.join(_SPLIT_SALT)}")
        if difficulty not in (1, 2):
            raise ValueError(f"difficulty must be 1 or 2, got {difficulty}")
        self.split = split
        self.size = size or SPLIT_SIZES[split]
        self.difficulty = difficulty

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Task:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = random.Random(_SPLIT_SALT[self.split] * 1_000_003 + index)
        prompt, expr, answer = _easy_problem(rng, self.split) if self.difficulty == 1 else _problem(rng)
        # "kind" groups tasks for a curriculum (trainer.curriculum.key=kind): the operator of an
        # easy problem, the number of steps of a word problem.
        kind = expr.split()[1] if self.difficulty == 1 else f"{prompt.count('Then ')} steps"
        return Task(id=f"arith-{self.split}-{index}", prompt=prompt, answer=answer, split=self.split,
                    metadata={"expression": expr, "kind": kind})

    def by_id(self, task_id: str) -> Task:
        return self[int(task_id.rsplit("-", 1)[1])]


def used_calculator(tool_calls: list[Any]) -> float:
    """Metric: 1.0 if the episode called the calculator at least once."""
    return float(any(getattr(c, "name", None) == "calculator" for c in tool_calls))


class ArithmeticEnv(ToolEnv):
    """Solve a word problem; use the calculator; finish with ``Answer: N``."""

    system_prompt = ("Solve the problem. You may call the calculator tool. "
                     "Finish with a line 'Answer: N' where N is the number.")
    default_max_turns = 4

    def __init__(self, *, size: int | None = None, difficulty: int = 2, **kwargs: Any):
        self._size = size
        self._difficulty = difficulty
        super().__init__(**kwargs)

    def load_tasks(self, split: str) -> ArithmeticTasks:
        return ArithmeticTasks(split, self._size, self._difficulty)

    def make_tools(self) -> list[Any]:
        return [calculator]

    def make_rubric(self) -> Rubric:
        return Rubric([numeric_close, (used_calculator, 0.0)])

    def demonstration(self, task: Task) -> list[dict[str, Any]]:
        expr = task.metadata["expression"]
        call = json.dumps({"name": "calculator", "arguments": {"expression": expr}})
        result = calculator.call_sync({"expression": expr}, {}).content
        return [*self.initial_messages(task),
                {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": result},
                {"role": "assistant", "content": f"Answer: {result}"}]

"""Verifiers: reward checkers as plain functions, composed with weights in a rubric."""

from __future__ import annotations

from toolgym.verifiers.answers import boxed_answers, extract_answer, strip_reasoning
from toolgym.verifiers.checks import (
    DEFAULT_MATH_VERIFIER,
    MathVerifier,
    exact_match,
    format_check,
    json_schema_check,
    math_equivalent,
    normalize_answer,
    numeric_close,
    parse_number,
    regex_format,
    token_f1,
)
from toolgym.verifiers.group import majority_agreement, majority_answer, shortest_correct_bonus
from toolgym.verifiers.rubric import Rubric, Score

__all__ = [
    "DEFAULT_MATH_VERIFIER", "MathVerifier", "Rubric", "Score", "boxed_answers", "exact_match", "extract_answer",
    "format_check", "json_schema_check", "majority_agreement", "majority_answer", "math_equivalent",
    "normalize_answer", "numeric_close", "parse_number", "regex_format", "shortest_correct_bonus", "strip_reasoning",
    "token_f1",
]

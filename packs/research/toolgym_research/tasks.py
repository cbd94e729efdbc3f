"""Questions that need both research and computation, generated from the fictional encyclopedia.

Each question names a few entities of :mod:`toolgym.search.world` and asks for a number
computed from their numeric facts (a city's founding year and population, a person's birth year,
an organisation's founding year): a sum of six-digit populations, a product, a mean, a range, a
filtered sum, a rank lookup. Some facts sit one hop away (the capital of a country, the
headquarters or founder of an organisation), so the entity to read must first be found in
another article. The numbers are large or many, so the arithmetic is best done in code.

Every question records its facts (where each value is stated) and the Python expression over
them, so the answer is computed by that expression and an oracle can replay the research and the
computation exactly. Questions are drawn from a seeded generator: eval questions first, then train
questions; a question (its kind and entities) never appears twice, so the splits are disjoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from toolgym.search.world import WORLD_VERSION, Entity, World, cached_world

TASKS_VERSION = 1  # bump on any change to templates or sampling: generated questions change with it
QUESTION_SCHEMA_VERSION = 1
_MAX_MISSES = 500  # consecutive duplicate draws after which a small world counts as exhausted
_SAFE_BUILTINS = {"abs": abs, "max": max, "min": min, "sum": sum, "sorted": sorted}


@dataclass(frozen=True)
class Fact:
    """One number a question needs: its variable name in the computation and where it is stated."""

    name: str  # Python identifier used in the question's expression
    entity_id: str  # the article that states the value
    entity_name: str
    attr: str  # population | founded | born
    value: int


@dataclass(frozen=True)
class ResearchQuestion:
    """A question, its answer, the facts it needs and how they combine.

    Args:
        kind: The template it came from (``population_sum``, ``filtered_sum`` ...).
        text: The question the model reads.
        answer: The reference answer, a decimal number as text.
        facts: The values the computation uses.
        expression: A Python expression over the fact names that computes the answer.
        path: Entity ids to read, in order (an entity named only in another article comes after it).
        key: Identity of the question (kind, entities, parameters): no two questions share one.
    """

    kind: str
    text: str
    answer: str
    facts: tuple[Fact, ...]
    expression: str
    path: tuple[str, ...]
    key: tuple[Any, ...]
    schema_version: int = QUESTION_SCHEMA_VERSION

    def metadata(self) -> dict[str, Any]:
        """The question as plain data for a task's metadata."""
        return {"kind": self.kind, "path": list(self.path), "expression": self.expression,
                "facts": [vars(f).copy() for f in self.facts], "schema_version": self.schema_version}


def evaluate(expression: str, values: dict[str, int]) -> str:
    """Compute an expression over named integers and format the result as a decimal number.

    Only the generator's own expressions are evaluated (never model output).

    Example:
        >>> evaluate("(a + b) / 4", {"a": 3, "b": 4})
        '1.75'
        >>> evaluate("max(a, b) - min(a, b)", {"a": 1200, "b": 950})
        '250'
    """
    result = eval(expression, {"__builtins__": _SAFE_BUILTINS}, dict(values))  # noqa: S307 - trusted text
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(result)


def _question(kind: str, text: str, facts: list[Fact], expression: str, path: list[str],
              key: tuple[Any, ...]) -> ResearchQuestion:
    answer = evaluate(expression, {f.name: f.value for f in facts})
    return ResearchQuestion(kind, text, answer, tuple(facts), expression, tuple(path), (kind, *key))


def _fact(name: str, e: Entity, attr: str) -> Fact:
    return Fact(name, e.id, e.name, attr, int(e.attrs[attr]))


def _listing(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}"


# ---- templates: each draws entities with ``rng`` and returns a question, or None if the draw is unusable

def _year_gap(world: World, rng: random.Random) -> ResearchQuestion | None:
    city, person = rng.choice(world.of_kind("city")), rng.choice(world.of_kind("person"))
    facts = [_fact("city_founded", city, "founded"), _fact("person_born", person, "born")]
    text = f"How many years passed between the founding of the city of {city.name} and the birth of {person.name}?"
    return _question("year_gap", text, facts, "person_born - city_founded", [city.id, person.id],
                     (city.id, person.id))


def _founder_age(world: World, rng: random.Random) -> ResearchQuestion | None:
    org = rng.choice(world.of_kind("org"))
    founder = world.entities[org.attrs["founder"]]
    facts = [_fact("org_founded", org, "founded"), _fact("founder_born", founder, "born")]
    text = f"How many years after the birth of its founder was {org.name} founded?"
    return _question("founder_age", text, facts, "org_founded - founder_born", [org.id, founder.id], (org.id,))


def _population_sum(world: World, rng: random.Random) -> ResearchQuestion | None:
    cities = rng.sample(world.of_kind("city"), 3)
    facts = [_fact(f"population_{i + 1}", c, "population") for i, c in enumerate(cities)]
    text = f"What is the combined population of the cities {_listing([c.name for c in cities])}?"
    return _question("population_sum", text, facts, " + ".join(f.name for f in facts), [c.id for c in cities],
                     tuple(sorted(c.id for c in cities)))


def _population_range(world: World, rng: random.Random) -> ResearchQuestion | None:
    cities = rng.sample(world.of_kind("city"), 4)
    facts = [_fact(f"population_{i + 1}", c, "population") for i, c in enumerate(cities)]
    names = ", ".join(f.name for f in facts)
    text = (f"Among the cities {_listing([c.name for c in cities])}, by how many inhabitants does the most "
            "populous exceed the least populous?")
    return _question("population_range", text, facts, f"max({names}) - min({names})", [c.id for c in cities],
                     tuple(sorted(c.id for c in cities)))


def _mean_birth_year(world: World, rng: random.Random) -> ResearchQuestion | None:
    people = rng.sample(world.of_kind("person"), 4)
    facts = [_fact(f"born_{i + 1}", p, "born") for i, p in enumerate(people)]
    text = f"What is the mean birth year of {_listing([p.name for p in people])}? Give the exact value."
    return _question("mean_birth_year", text, facts, f"({' + '.join(f.name for f in facts)}) / 4",
                     [p.id for p in people], tuple(sorted(p.id for p in people)))


def _capital_gap(world: World, rng: random.Random) -> ResearchQuestion | None:
    pair = rng.sample(world.of_kind("country"), 2)
    capitals = [world.entities[k.attrs["capital"]] for k in pair]
    if capitals[0].attrs["population"] == capitals[1].attrs["population"]:
        return None
    if capitals[0].attrs["population"] < capitals[1].attrs["population"]:
        pair, capitals = pair[::-1], capitals[::-1]  # ask how many *more*: the larger capital first
    facts = [_fact("capital_1_population", capitals[0], "population"),
             _fact("capital_2_population", capitals[1], "population")]
    text = f"How many more inhabitants does the capital of {pair[0].name} have than the capital of {pair[1].name}?"
    return _question("capital_gap", text, facts, "capital_1_population - capital_2_population",
                     [pair[0].id, capitals[0].id, pair[1].id, capitals[1].id], tuple(sorted(k.id for k in pair)))


def _hq_product(world: World, rng: random.Random) -> ResearchQuestion | None:
    org = rng.choice(world.of_kind("org"))
    hq = world.entities[org.attrs["headquarters"]]
    facts = [_fact("hq_population", hq, "population"), _fact("org_founded", org, "founded")]
    text = (f"Multiply the population of the city where {org.name} has its headquarters by the year {org.name} "
            "was founded. What is the result?")
    return _question("hq_product", text, facts, "hq_population * org_founded", [org.id, hq.id], (org.id,))


def _filtered_sum(world: World, rng: random.Random) -> ResearchQuestion | None:
    cities = rng.sample(world.of_kind("city"), 4)
    years = sorted(c.attrs["founded"] for c in cities)
    cut = rng.randint(1, 3)  # how many cities qualify: never none, never all
    if years[cut - 1] == years[cut]:
        return None
    threshold = rng.randint(years[cut - 1] + 1, years[cut])
    facts = [f for i, c in enumerate(cities)
             for f in (_fact(f"population_{i + 1}", c, "population"), _fact(f"founded_{i + 1}", c, "founded"))]
    pairs = ", ".join(f"(population_{i + 1}, founded_{i + 1})" for i in range(len(cities)))
    text = (f"Of the cities {_listing([c.name for c in cities])}, take those founded before the year {threshold}. "
            "What is their combined population?")
    return _question("filtered_sum", text, facts, f"sum(p for p, f in [{pairs}] if f < {threshold})",
                     [c.id for c in cities], (*sorted(c.id for c in cities), threshold))


_ORDINALS = ("most", "second most", "third most", "fourth most")


def _rank_lookup(world: World, rng: random.Random) -> ResearchQuestion | None:
    cities = rng.sample(world.of_kind("city"), 4)
    if len({c.attrs["population"] for c in cities}) < len(cities):
        return None  # a tie would make the ranking ambiguous
    rank = rng.randint(1, 2)
    facts = [f for i, c in enumerate(cities)
             for f in (_fact(f"population_{i + 1}", c, "population"), _fact(f"founded_{i + 1}", c, "founded"))]
    pairs = ", ".join(f"(population_{i + 1}, founded_{i + 1})" for i in range(len(cities)))
    text = (f"Rank the cities {_listing([c.name for c in cities])} by population. In what year was the "
            f"{_ORDINALS[rank]} populous of them founded?")
    return _question("rank_lookup", text, facts, f"sorted([{pairs}], reverse=True)[{rank}][1]",
                     [c.id for c in cities], (*sorted(c.id for c in cities), rank))


TEMPLATES: dict[str, Callable[[World, random.Random], ResearchQuestion | None]] = {
    "year_gap": _year_gap,
    "founder_age": _founder_age,
    "population_sum": _population_sum,
    "population_range": _population_range,
    "mean_birth_year": _mean_birth_year,
    "capital_gap": _capital_gap,
    "hq_product": _hq_product,
    "filtered_sum": _filtered_sum,
    "rank_lookup": _rank_lookup,
}


def _draw(world: World, rng: random.Random, count: int, seen: set[tuple[Any, ...]]) -> list[ResearchQuestion]:
    """Up to ``count`` new questions; fewer only when the world has run out of distinct ones."""
    kinds = list(TEMPLATES)
    out: list[ResearchQuestion] = []
    misses = 0
    while len(out) < count and misses < _MAX_MISSES:
        q = TEMPLATES[kinds[rng.randrange(len(kinds))]](world, rng)
        if q is None or q.key in seen:
            misses += 1
            continue
        misses = 0
        seen.add(q.key)
        out.append(q)
    return out


@lru_cache(maxsize=8)
def research_questions(seed: int, num_entities: int, num_eval: int, num_train: int
                       ) -> dict[str, tuple[ResearchQuestion, ...]]:
    """The eval and train questions about one world, disjoint and deterministic.

    Eval questions are drawn first, so they do not depend on ``num_train``. A small world may
    hold fewer distinct questions than asked for; the train split is then shorter.

    Example:
        >>> qs = research_questions(0, 60, 10, 50)
        >>> len(qs["eval"]), len(qs["train"])
        (10, 50)
        >>> not {q.key for q in qs["eval"]} & {q.key for q in qs["train"]}
        True
    """
    world = cached_world(seed, num_entities)
    rng = random.Random(f"toolgym-research-v{TASKS_VERSION}-world{WORLD_VERSION}-{seed}-{num_entities}")
    seen: set[tuple[Any, ...]] = set()
    evals = _draw(world, rng, num_eval, seen)
    return {"eval": tuple(evals), "train": tuple(_draw(world, rng, num_train, seen))}

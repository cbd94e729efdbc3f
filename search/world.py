"""A procedurally generated fictional encyclopedia, and questions answerable only by searching it.

Countries, cities, people and organisations get invented names and attributes, linked by
relations (a city lies in a country, a person was born in a city and works for an organisation,
an organisation has a founder and a headquarters). Each entity becomes an article. Because every
name and fact is invented from a seed, a model cannot answer from pretraining: it has to search.

Questions follow a chain of relations from a named entity: one hop ("Who founded X?") up to three
("In which country was the founder of X born?"). Each question records its chain, so an oracle
can replay the searches that answer it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

WORLD_VERSION = 1  # bump on any change to names, facts or article text: cached indexes are keyed by it
_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st", "t",
           "th", "tr", "v", "vr", "z", "sh", "ch", "w", "y"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "ei", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "x", "th", "m", "nd", "rk", "st", "v"]
_ORG_KINDS = ["Dynamics", "Works", "Holdings", "Foundry", "Laboratories", "Trading Company", "Mills", "Institute",
              "Shipyards", "Press"]
_INDUSTRIES = ["shipbuilding", "textiles", "printing", "optics", "mining", "brewing", "clockmaking", "pharmaceuticals",
               "railways", "glassmaking", "banking", "aviation"]
_OCCUPATIONS = ["engineer", "cartographer", "chemist", "architect", "composer", "botanist", "merchant", "physician",
                "astronomer", "novelist", "sculptor", "economist"]
_CURRENCIES = ["crown", "mark", "talon", "florin", "lira", "sovereign", "duca", "penna"]
_FEATURES = ["a covered market", "a stone bridge", "an old lighthouse", "terraced vineyards", "a botanical garden",
             "a clock tower", "salt marshes", "a cathedral of red brick", "a harbour fortress", "hot springs"]


@dataclass
class Entity:
    """One encyclopedia subject: its kind, name and attributes (relations hold entity ids)."""

    id: str
    kind: str  # country | city | person | org
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    """All entities of one generated encyclopedia, by id."""

    seed: int
    entities: dict[str, Entity]

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]


class _Names:
    """Unique invented words: no two entities share a name word, so a name search is unambiguous."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        for _ in range(10_000):
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))
            w = (w + self.rng.choice(_CODAS)).capitalize()
            if w not in self.used and len(w) >= 4:
                self.used.add(w)
                return w
        raise RuntimeError("ran out of names")  # pragma: no cover - 10k tries over a huge space


def generate_world(seed: int, num_entities: int) -> World:
    """Generate an encyclopedia of about ``num_entities`` entities.

    Example:
        >>> w = generate_world(0, 60)
        >>> len(w.entities), sorted({e.kind for e in w.entities.values()})
        (60, ['city', 'country', 'org', 'person'])
        >>> generate_world(0, 60).entities["p0003"].name == w.entities["p0003"].name
        True
    """
    if num_entities < 20:
        raise ValueError("num_entities must be at least 20")
    rng = random.Random(f"toolgym-world-{WORLD_VERSION}-{seed}")
    names = _Names(rng)
    n_country = max(3, num_entities // 25)
    n_city = max(6, num_entities // 5)
    n_org = max(4, num_entities // 4)
    n_person = num_entities - n_country - n_city - n_org
    ents: dict[str, Entity] = {}
    countries = [Entity(f"k{i:04d}", "country", names.word((2, 3)), {"currency": rng.choice(_CURRENCIES)})
                 for i in range(n_country)]
    cities = [Entity(f"c{i:04d}", "city", names.word((2, 3)),
                     {"country": countries[i % n_country].id, "founded": rng.randint(900, 1700),
                      "feature": rng.choice(_FEATURES), "population": rng.randint(8, 900) * 1000})
              for i in range(n_city)]
    for i, country in enumerate(countries):
        country.attrs["capital"] = cities[i].id  # city i lies in country i (i % n_country)
    people = []
    for i in range(n_person):
        born = rng.randint(1780, 1940)
        people.append(Entity(f"p{i:04d}", "person", f"{names.word((1, 2))} {names.word((2, 3))}",
                             {"born": born, "birthplace": rng.choice(cities).id,
                              "occupation": rng.choice(_OCCUPATIONS)}))
    orgs = []
    for i in range(n_org):
        founder = people[i % n_person]
        orgs.append(Entity(f"o{i:04d}", "org", f"{names.word((2, 3))} {rng.choice(_ORG_KINDS)}",
                           {"founder": founder.id, "founded": founder.attrs["born"] + rng.randint(25, 55),
                            "headquarters": rng.choice(cities).id, "industry": rng.choice(_INDUSTRIES)}))
    for person in people[n_org:]:  # people who founded nothing work for someone
        if rng.random() < 0.7:
            person.attrs["employer"] = rng.choice(orgs).id
    for e in [*countries, *cities, *people, *orgs]:
        ents[e.id] = e
    return World(seed=seed, entities=ents)


# ---- articles ----------------------------------------------------------------------------------
def _article(world: World, e: Entity, rng: random.Random) -> str:
    n = {k: world.entities[v].name for k, v in e.attrs.items() if isinstance(v, str) and v in world.entities}
    a = e.attrs
    if e.kind == "country":
        lines = [f"{e.name} is a sovereign state. Its capital is {n['capital']}.",
                 f"The currency of {e.name} is the {e.name.lower()} {a['currency']}.",
                 f"{e.name} is governed from {n['capital']}, its largest city."]
    elif e.kind == "city":
        lines = [f"{e.name} is a city in {n['country']}.", f"{e.name} was founded in {a['founded']}.",
                 f"The city is known for {a['feature']}.", f"It has about {a['population']:,} inhabitants."]
    elif e.kind == "person":
        lines = [f"{e.name} (born {a['born']}) was a {a['occupation']} from {n['birthplace']}.",
                 f"{e.name.split()[-1]} was born in {n['birthplace']} in {a['born']}."]
        if "employer" in n:
            lines.append(f"{e.name.split()[-1]} worked for {n['employer']}.")
    else:
        lines = [f"{e.name} is a {a['industry']} company founded in {a['founded']} by {n['founder']}.",
                 f"Its headquarters are in {n['headquarters']}.",
                 f"{e.name} was established by {n['founder']} in {a['founded']}."]
    filler = [f"Records of {e.name} are kept in several archives.", "Historians have written about it at length.",
              "Little else is recorded about the early years.", f"Visitors often ask about {e.name}."]
    rng.shuffle(filler)
    return " ".join(lines[:1] + filler[:2] + lines[1:] + filler[2:3])


def articles(world: World) -> list[dict[str, str]]:
    """The encyclopedia as corpus records (``id``, ``title``, ``text``), one per entity."""
    rng = random.Random(f"articles-{world.seed}")
    return [{"id": e.id, "title": e.name, "text": _article(world, e, rng)} for e in world.entities.values()]


# ---- questions ---------------------------------------------------------------------------------
# (template, start kind, relation chain, final attribute). The chain follows entity-valued attributes.
TEMPLATES: list[tuple[str, str, tuple[str, ...], str]] = [
    ("In what year was {x} founded?", "org", (), "founded"),
    ("Who founded {x}?", "org", (), "founder"),
    ("In which city is {x} headquartered?", "org", (), "headquarters"),
    ("In which city was {x} born?", "person", (), "birthplace"),
    ("What was the occupation of {x}?", "person", (), "occupation"),
    ("What is the capital of {x}?", "country", (), "capital"),
    ("In which country is the city of {x}?", "city", (), "country"),
    ("In what year was the founder of {x} born?", "org", ("founder",), "born"),
    ("In which country are the headquarters of {x}?", "org", ("headquarters",), "country"),
    ("In which country was {x} born?", "person", ("birthplace",), "country"),
    ("In what year was the employer of {x} founded?", "person", ("employer",), "founded"),
    ("What is the capital of the country where {x} lies?", "city", ("country",), "capital"),
    ("In which country was the founder of {x} born?", "org", ("founder", "birthplace"), "country"),
]


@dataclass(frozen=True)
class Question:
    """A question, its answer, and the entity ids an oracle visits to answer it (in order)."""

    text: str
    answer: str
    path: tuple[str, ...]
    hops: int


def _answer(world: World, start: Entity, chain: tuple[str, ...], attr: str) -> tuple[str, tuple[str, ...]] | None:
    path, e = [start.id], start
    for rel in chain:
        target = e.attrs.get(rel)
        if target is None:
            return None
        e = world.entities[target]
        path.append(e.id)
    value = e.attrs.get(attr)
    if value is None:
        return None
    if isinstance(value, str) and value in world.entities:
        return world.entities[value].name, tuple(path)
    return str(value), tuple(path)


@lru_cache(maxsize=8)
def questions(seed: int, num_entities: int) -> tuple[Question, ...]:
    """Every answerable question about a world, in a seeded order.

    Example:
        >>> q = questions(0, 60)
        >>> len(q) > 60, all(1 <= x.hops <= 3 for x in q)
        (True, True)
    """
    world = cached_world(seed, num_entities)
    out = []
    for template, kind, chain, attr in TEMPLATES:
        for e in world.of_kind(kind):
            found = _answer(world, e, chain, attr)
            if found is not None:
                out.append(Question(template.format(x=e.name), found[0], found[1], len(chain) + 1))
    random.Random(f"questions-{seed}").shuffle(out)
    return tuple(out)


@lru_cache(maxsize=8)
def cached_world(seed: int, num_entities: int) -> World:
    return generate_world(seed, num_entities)

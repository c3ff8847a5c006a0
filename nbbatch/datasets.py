"""Small synthetic data sets for the demo, the example notebooks and the tests.

Generated from a seed, so every run gets the same rows and nothing is downloaded.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

_PRODUCTS = [
    ("Aurora desk lamp", "lighting"),
    ("Trailblazer hiking boots", "outdoor"),
    ("Brewmaster kettle", "kitchen"),
    ("Nimbus pillow", "bedroom"),
    ("Pocket projector", "electronics"),
    ("Everyday backpack", "bags"),
]
_OPENINGS = {
    "positive": ["Absolutely love the {p}.", "The {p} exceeded my expectations.", "Great {p}!"],
    "negative": [
        "The {p} broke after a week.",
        "Very disappointed with the {p}.",
        "Avoid the {p}.",
    ],
    "neutral": ["The {p} is okay.", "The {p} does what it says.", "Average {p}, nothing special."],
}
_DETAILS = {
    "positive": [
        "Setup took two minutes",
        "it feels sturdy",
        "shipping was fast",
        "worth every cent",
    ],
    "negative": [
        "the seams came apart",
        "support never answered",
        "it arrived scratched",
        "too loud",
    ],
    "neutral": [
        "the colour is fine",
        "delivery was on time",
        "the manual is short",
        "it is a bit heavy",
    ],
}


#: Words that give a review's sentiment away, for :func:`sentiment_responder`.
SENTIMENT_KEYWORDS = {
    "positive": ["love", "great", "exceeded", "sturdy", "fast", "worth"],
    "negative": ["broke", "disappointed", "avoid", "apart", "never", "scratched", "loud"],
}


#: A JSON schema of a sentiment label and a confidence between 0 and 1: the structured
#: output :func:`sentiment_responder` fills (``response_format=SENTIMENT_SCHEMA``), for
#: the benchmarks and tests that classify :func:`reviews` on the emulator.
SENTIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


#: How often each model of the demo gives the stand-in's answer (the rest: another label
#: with a lower confidence; see :func:`nbbatch.emulator.with_quality`). Made up for the
#: demonstration, not measured: a small model wrong on about one row in eight, a large
#: one on about one in thirty, so a cascade has something to gain. Other models agree.
DEMO_QUALITY: dict[str, float] = {"gpt-4o-mini": 0.88, "gpt-4o": 0.97}


def sentiment_responder(quality: dict[str, float] | None = DEMO_QUALITY) -> Any:
    """A stand-in for a sentiment model on :func:`reviews`, for the demo and the example
    notebooks on the emulator: ``nb.emulator.start(responder=sentiment_responder())``.

    It is not a model: it labels a review ``positive`` or ``negative`` when the review
    uses one of :data:`SENTIMENT_KEYWORDS`, else ``neutral`` (a plain-text request gets
    the label, a structured one the label in its enum field and a ``confidence``), so
    what a notebook shows looks like a real run. As the models named in ``quality``
    (default :data:`DEMO_QUALITY`; None: every model) it gives that label on that share
    of rows only, and another label with a lower confidence on the rest, so a small and
    a large model differ as they would. See :func:`nbbatch.emulator.keyword_responder`.
    """
    from .emulator import keyword_responder, with_quality

    labeller = keyword_responder(SENTIMENT_KEYWORDS, default="neutral")
    return labeller if quality is None else with_quality(labeller, quality)


#: Number words a summarising prompt may ask for ("in five words").
_COUNTS = {"three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "ten": 10}


def demo_responder(quality: dict[str, float] | None = DEMO_QUALITY) -> Any:
    """A stand-in for a model on the example notebooks' prompts, on the emulator:
    ``nb.emulator.start(responder=demo_responder())``.

    It is not a model. A prompt that asks to classify gets :func:`sentiment_responder`'s
    label; one that asks to summarise gets the first words of the text after its
    instruction (as many as "in five words" asks, else the first sentence, at most 30
    words); anything else gets the emulator's usual answer. So a notebook's summary
    column reads like summaries, not like an echo of the prompt. As the models named in
    ``quality`` (default :data:`DEMO_QUALITY`; None: every model) it gives that answer
    on that share of rows only (another label, a shortened summary on the rest).
    """
    from .emulator import default_responder, with_quality

    classify = sentiment_responder(None)

    def respond(request: Any) -> str | dict[str, Any]:
        head, _, body = request.prompt.partition("\n")
        words = head.lower().replace(":", " ").split()
        if "classify" in words:
            return classify(request)
        if not any(w.startswith(("summar", "summir")) for w in words):
            return default_responder(request)
        if not body.strip():  # the text on the instruction's line: "Summarise: {text}"
            body = head.partition(":")[2]
        limit = next((_COUNTS[w] for w in words if w in _COUNTS), 30)
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        titles = [line.lstrip("# ") for line in lines if line.startswith("#")]
        text = " ".join(line for line in lines if not line.startswith("#"))
        first = text.split(". ")[0].rstrip(".").split()
        summary = " ".join(first[:limit]) + ("…" if len(first) > limit else ".")
        return f"{titles[0]}: {summary}" if titles and limit == 30 else summary

    if quality is None:
        return respond
    labels = (*SENTIMENT_KEYWORDS, "neutral")  # a plain-text label disagrees with another
    return with_quality(respond, quality, labels=labels)


def reviews(n: int = 12, *, seed: int = 7) -> pd.DataFrame:
    """``n`` synthetic product reviews: ``product``, ``category``, ``stars``, ``review``,
    and the ``true_sentiment`` they were written with (to check a classifier against)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        product, category = rng.choice(_PRODUCTS)
        sentiment = rng.choice(["positive", "negative", "neutral"])
        stars = {"positive": rng.choice([4, 5]), "negative": rng.choice([1, 2]), "neutral": 3}[
            sentiment
        ]
        text = rng.choice(_OPENINGS[sentiment]).format(p=product)
        details = rng.sample(_DETAILS[sentiment], k=2)
        text += f" {details[0].capitalize()}, and {details[1]}."
        rows.append(
            {
                "review_id": f"R{1000 + i}",
                "product": product,
                "category": category,
                "stars": stars,
                "review": text,
                "true_sentiment": sentiment,
            }
        )
    return pd.DataFrame(rows).set_index("review_id")


_FIRST_NAMES = ["Maria", "Kenji", "Amara", "Lukas", "Priya", "Tomás", "Ingrid", "Samuel", "Leila"]
_LAST_NAMES = ["Lopez", "Tanaka", "Okafor", "Becker", "Sharma", "Silva", "Berg", "Mensah", "Haddad"]
_PLACES = [
    ("Lyon", "France"),
    ("Osaka", "Japan"),
    ("Lagos", "Nigeria"),
    ("Leipzig", "Germany"),
    ("Pune", "India"),
    ("Porto", "Portugal"),
    ("Bergen", "Norway"),
    ("Accra", "Ghana"),
    ("Toronto", "Canada"),
]
_ISSUES = {
    "damaged": ["arrived scratched", "came with a cracked case", "stopped working on day two"],
    "late": ["still has not arrived", "is a week late", "has been stuck in transit for days"],
    "wrong_item": ["is the wrong colour", "turned out to be a different model", "is missing parts"],
    "refund": ["is not what I need", "was a gift nobody wanted", "is too big for my flat"],
}
_ASKS = {
    "damaged": "Please send a replacement.",
    "late": "Can you tell me where it is?",
    "wrong_item": "Please exchange it for the right one.",
    "refund": "I would like a refund, please.",
}
_TONE = {
    "low": "No rush at all.",
    "medium": "I would appreciate an answer this week.",
    "high": "This is urgent, I need it sorted today!",
}


def tickets(n: int = 12, *, seed: int = 11) -> pd.DataFrame:
    """``n`` synthetic customer-support tickets, indexed by ``ticket_id``: the ``channel``
    they came through and the free ``text`` a customer wrote, mentioning their name, an
    order number, a product, what went wrong, how urgent it is and where they live (the
    fields an extraction prompt pulls out)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
        order = f"A-{rng.randrange(10000, 99999)}"
        product, _ = rng.choice(_PRODUCTS)
        issue = rng.choice(sorted(_ISSUES))
        urgency = rng.choice(["low", "medium", "high"])
        city, country = rng.choice(_PLACES)
        greeting = rng.choice(["Hi,", "Hello,", "Dear support,", "Good morning,"])
        text = (
            f"{greeting} this is {name}. My order {order} ({product}) "
            f"{rng.choice(_ISSUES[issue])}. {_ASKS[issue]} {_TONE[urgency]} "
            f"I live in {city}, {country}."
        )
        rows.append(
            {
                "ticket_id": f"T{2000 + i}",
                "channel": rng.choice(["email", "chat", "web form"]),
                "text": text,
            }
        )
    return pd.DataFrame(rows).set_index("ticket_id")


_SECTIONS = {
    "science": ["ocean currents", "soil microbes", "glacier melt", "bird migration", "coral reefs"],
    "technology": ["battery recycling", "rural broadband", "open-source firmware", "heat pumps"],
    "business": ["small bakeries", "bicycle couriers", "vinyl pressing plants", "coworking"],
    "culture": ["community choirs", "public libraries", "street murals", "regional cinema"],
}
_TOWNS = ["Halden", "Marlow", "Eskbridge", "Valcourt", "Oderhaven", "Tavira", "Kilnsey"]
_PARAGRAPHS = [
    "In {town}, interest in {topic} has grown steadily over the past {years} years. Local "
    "groups say the change started small: a handful of volunteers, a borrowed room and a "
    "newsletter that went out to {people} readers. Today the same effort involves schools, "
    "two councils and a regional fund.",
    "Researchers who followed the project describe a familiar pattern. Early results were "
    "mixed, costs ran {pct} percent over plan in the first year, and several partners "
    "nearly withdrew. What kept it going, they say, was patient measurement: every season "
    "the team published its numbers, including the ones that looked bad.",
    "Critics are less convinced. They point out that {topic} in {town} still depends on a "
    "few committed people and on grants that end in {end_year}. Without them, one "
    "economist warned, the work could shrink back to where it began within a decade.",
    "Supporters answer that the benefits are already visible. Surveys show that {pct2} "
    "percent of residents have heard of the programme, and a growing number take part. "
    "Neighbouring towns have sent delegations to learn how the model could travel.",
    "The next phase focuses on training. Over the coming {years2} years the organisers plan "
    "to teach {trainees} new coordinators, document what worked, and publish a plain-language "
    "guide so that other communities can adapt the approach without starting from scratch.",
    "Money remains the open question. A proposal for a permanent budget line will be "
    "debated in {month}, and the outcome is uncertain. Whatever happens, the people behind "
    "the project say they will keep publishing their data so that others can judge for "
    "themselves.",
    "For now, the mood in {town} is cautiously optimistic. As one long-time volunteer put "
    "it, the point was never to prove that {topic} could transform the town overnight, but "
    "to show that steady, visible work adds up.",
]
_MONTHS = ["January", "March", "May", "September", "October", "November"]


def articles(n: int = 8, *, seed: int = 5) -> pd.DataFrame:
    """``n`` synthetic news articles (about 2,000 characters each, several paragraphs),
    indexed by ``article_id``, with ``section``, ``title`` and ``text``: long texts to
    summarise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        section = rng.choice(sorted(_SECTIONS))
        topic = rng.choice(_SECTIONS[section])
        town = rng.choice(_TOWNS)
        values = {
            "town": town,
            "topic": topic,
            "years": rng.randrange(3, 12),
            "years2": rng.randrange(2, 6),
            "people": rng.randrange(40, 400),
            "pct": rng.randrange(10, 45),
            "pct2": rng.randrange(30, 85),
            "end_year": rng.randrange(2027, 2031),
            "trainees": rng.randrange(12, 120),
            "month": rng.choice(_MONTHS),
        }
        paragraphs = [p.format(**values) for p in _PARAGRAPHS]
        middle = paragraphs[1:-1]
        rng.shuffle(middle)
        text = "\n\n".join([paragraphs[0], *middle, paragraphs[-1]])
        title = f"How {town} learned to care about {topic}"
        rows.append(
            {"article_id": f"A{3000 + i}", "section": section, "title": title, "text": text}
        )
    return pd.DataFrame(rows).set_index("article_id")


_STYLE_TOPICS = [
    "numbers", "names", "dates", "quotations", "place names", "units", "uncertainty",
    "money", "percentages", "organisations", "titles", "abbreviations", "tone", "hedging",
    "attribution", "time references", "lists", "sentence length", "jargon", "balance",
    "spelling", "headlines", "ages", "sources", "corrections",
]  # fmt: skip
_STYLE_RULES = [
    "When a summary mentions {topic}, keep them exactly as the article gives them; never "
    "round, translate or embellish them, and never add {topic} the article does not contain.",
    "If the article is unclear about {topic}, say so briefly instead of guessing; a reader "
    "should be able to tell what the article states from what the summary infers.",
    "Prefer plain words when writing about {topic}. Replace specialist vocabulary with an "
    "everyday phrase when one exists, and keep the specialist term only when the article "
    "depends on it.",
    "Do not let {topic} crowd out the main point. The first sentence of every summary says "
    "what happened and where; details about {topic} come after, only if space allows.",
    "Treat {topic} consistently across the whole summary: the same form the first time and "
    "every later time, so that a reader skimming several summaries can compare them.",
]


def style_guide(*, seed: int = 3) -> str:
    """A long synthetic house style guide for summaries (about 23,000 characters, some
    5,000 tokens): a shared system prompt long enough for providers' prompt caching,
    which only caches prefixes above a minimum length."""
    rng = random.Random(seed)
    lines = [
        "You write summaries of news articles for a newsletter. Follow this house style "
        "guide exactly. Answer with the summary only: at most three sentences, no heading, "
        "no bullet points.",
        "",
    ]
    k = 0
    for topic in _STYLE_TOPICS:
        lines.append(f"## {topic.capitalize()}")
        for rule in rng.sample(_STYLE_RULES, k=len(_STYLE_RULES)):
            k += 1
            lines.append(f"{k}. {rule.format(topic=topic)}")
        lines.append("")
    lines.append("End of the style guide. The article to summarise follows in the user message.")
    return "\n".join(lines)

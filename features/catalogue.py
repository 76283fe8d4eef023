"""The feature catalogue: what every snapshot column means, in which unit, over which window.

The specs are declared next to the code that computes them (``transforms.py`` for features,
``labels.py`` for labels); this module holds the record type and renders the Markdown of
``docs/features.md``. The snapshot builder checks that the columns it computes are exactly
the catalogue's, in the catalogue's order, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

#: the dtypes a snapshot column may have (pandas names); ``category`` holds text labels
DTYPES = ("int64", "float64", "category")


@dataclass(frozen=True)
class FeatureSpec:
    """One column of a snapshot.

    Attributes
    ----------
    name : str
        Column name, snake_case; count, day and share columns end in ``_count``, ``_days``
        (or start with ``days_``), ``_share`` / ``_ratio``; money columns are named by what
        they measure (revenue, margin, cost, balance), in the base's currency.
    family : str
        Feature family (profile, rfm, trend, product_mix, value, payment, service,
        attributes) or ``label``.
    meaning : str
        What the value is, in a sentence.
    unit : str
        Unit of the value: ``days``, ``count``, ``currency``, ``share``, ``ratio``, ``category``.
    window : str
        Time window relative to the as-of date T, e.g. ``[T-90d, T)``, ``before T``,
        ``[T, T+H)`` for labels.
    dtype : str
        pandas dtype of the column, one of :data:`DTYPES`.
    requires : str or None
        The optional table the column needs (``invoices`` or ``interactions``); the column
        is absent from snapshots of bases without it.
    """

    name: str
    family: str
    meaning: str
    unit: str
    window: str
    dtype: str
    requires: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:  # a programming error, caught by the test suite
            raise ValueError(f"dtype of {self.name!r} must be one of {DTYPES}; got {self.dtype!r}")

    @property
    def phrase(self) -> str:
        """The meaning's first clause, with the window when the clause does not state it: what a
        reason code's text names. The windows of one measure share their meaning ("Number of
        distinct orders" over 30, 90, 365 days and to date), and a CRM user reading two reasons
        side by side must tell them apart: "Number of distinct orders in the last 90 days"."""
        clause = self.meaning.split(";")[0]
        trailing = re.fullmatch(r"\[T-(\d+)d, T\)", self.window)
        if trailing and not re.search(r"\d+(d\b|-day| days)", clause):  # "365-day revenue", "margin_365d"
            return f"{clause} in the last {trailing.group(1)} days"
        if self.window == "before T" and "lifetime" in self.name and "lifetime" not in clause:
            return f"{clause} to date"
        return clause


def render_markdown(specs: Iterable[FeatureSpec], *, title: str = "Feature catalogue") -> str:
    """Render specs as one Markdown table per family, in the order given.

    Parameters
    ----------
    specs : iterable of FeatureSpec
        Usually the catalogue of a base with placeholder category names.
    title : str
        Heading of the section.

    Returns
    -------
    str
        Markdown text.
    """
    by_family: dict[str, list[FeatureSpec]] = {}
    for spec in specs:
        by_family.setdefault(spec.family, []).append(spec)
    lines = [f"## {title}", ""]
    for family, items in by_family.items():
        lines += [f"### {family}", ""]
        lines += ["| column | meaning | unit | window | dtype | needs |", "|---|---|---|---|---|---|"]
        for s in items:
            needs = s.requires or "-"
            lines.append(
                f"| `{s.name}` | {s.meaning} | {s.unit} | {s.window} | {s.dtype} | {needs} |"
            )
        lines.append("")
    return "\n".join(lines)


def _plain_letter(ch: str) -> str:
    """A Latin letter without its accent (``é`` -> ``e``, ``ü`` -> ``u``, the ligature ``ﬁ`` ->
    ``fi``); other characters as they are (``ß``, ``本``, ``ゲ``: without their marks they are
    no plain Latin letters)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return plain if plain.isascii() and plain.isalpha() else ch


def category_slugs(categories: Iterable[str]) -> list[str]:
    """Column-name forms of product categories: lower case, accents off Latin letters, runs of
    other characters (punctuation, spaces, ``_``) -> ``_``. Letters of other scripts stay
    (``本``), as LightGBM, Parquet and Spark take them in names; before, every non-ASCII
    letter was dropped, so ``Bücher`` read ``b_cher`` and two Japanese categories collided.

    Raises
    ------
    ValueError
        If two categories give the same name (e.g. ``"Home"`` and ``"home"``).
    """
    slugs: list[str] = []
    seen: dict[str, str] = {}
    for category in categories:
        text = "".join(map(_plain_letter, str(category))).lower()
        slug = re.sub(r"[\W_]+", "_", text).strip("_") or "blank"
        if slug in seen:
            raise ValueError(
                f"product categories {seen[slug]!r} and {category!r} both give the column "
                f"name {slug!r}; rename one of them in the base"
            )
        seen[slug] = str(category)
        slugs.append(slug)
    return slugs

"""The emulator's keyword model: deterministic predictions from ``taxonomy.yaml``.

It is a stand-in for a trained Communications Mining model, not one: a label's
probability grows with the number of its keywords (and trigger entities) found in the
subject, the body and the attachment names (one hit ~0.6, two ~0.8, three ~0.9, then
~0.95; ``staging`` adds a small boost). Labels without a hit get a small deterministic
floor (< 0.1), so that ``threshold: 0`` returns the whole taxonomy as a real model does.
Parents are returned as their own entries with the max of their own score and their
children's.

Threshold semantics (``cm-api.md`` §2.1): a number filters every label; ``"auto"`` keeps a
label that meets the lowest auto cut-off (``high_recall``, 0.3 by default) and lists in
``auto_thresholds`` every cut-off it meets (``balanced`` 0.5, ``high_precision`` 0.8).
``labels`` restricts the output to the listed labels, each with its own threshold or,
failing that, the top-level one.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._entities import FoundEntity, find_entities
from ._taxonomy import Keyword, LabelDef, PropertyDef, Taxonomy, load_taxonomy

__all__ = ["DEFAULT_THRESHOLD", "DocText", "KeywordModel", "Selection", "TextPart"]

DEFAULT_THRESHOLD = 0.25
MEMO_ENTRIES = 4096  # scored texts kept (a few MB at most)
_ROUND = 6


@dataclass(frozen=True, slots=True)
class TextPart:
    """One piece of text the offsets of entities refer to."""

    message_index: int
    content_part: str  # "subject" | "body" | "signature"
    text: str


@dataclass(frozen=True, slots=True)
class DocText:
    """Everything the model reads of one document."""

    parts: tuple[TextPart, ...]
    extra: tuple[str, ...] = ()  # read for keywords, never for entities (attachment names)

    @property
    def searchable(self) -> str:
        # Blank lines between parts so no keyword spans two of them.
        return "\n\n".join((*(p.text for p in self.parts), *self.extra))


@dataclass(frozen=True, slots=True)
class Selection:
    """What to return: the request's ``threshold`` and ``labels``, parsed."""

    threshold: float | str = DEFAULT_THRESHOLD
    labels: Mapping[tuple[str, ...], float | None] | None = None

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> Selection:
        labels: dict[tuple[str, ...], float | None] | None = None
        if body.get("labels") is not None:
            labels = {
                tuple(item["name"]): (
                    float(item["threshold"]) if item.get("threshold") is not None else None
                )
                for item in body["labels"]
            }
        threshold = body.get("threshold", DEFAULT_THRESHOLD)
        if threshold != "auto":
            threshold = float(threshold)
        return cls(threshold=threshold, labels=labels)


def _unit(*keys: str) -> float:
    """A stable number in [0, 1) from ``keys``."""
    digest = hashlib.sha256("\x1f".join(keys).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _polarity(prop: PropertyDef, counts: Mapping[Keyword, int]) -> tuple[float, int]:
    pos = sum(counts.get(k, 0) for k in prop.positive)
    neg = sum(counts.get(k, 0) for k in prop.negative)
    return (round(math.tanh(0.5 * (pos - neg)), _ROUND) if pos + neg else 0.0), pos + neg


@dataclass
class _Scored:
    probabilities: dict[tuple[str, ...], float]
    entities: list[FoundEntity]
    sentiment: float
    has_sentiment: bool
    properties: list[dict[str, Any]] = field(default_factory=list)


class KeywordModel:
    """Keyword-based predictions over a ``Taxonomy``; the same answer for the same input."""

    def __init__(self, taxonomy: Taxonomy):
        self.taxonomy = taxonomy
        self._by_parts: dict[tuple[str, ...], LabelDef] = {lb.parts: lb for lb in taxonomy.labels}
        # Deepest first, so a parent is computed after all of its children.
        self._bottom_up = sorted(taxonomy.labels, key=lambda lb: -len(lb.parts))
        jitter = taxonomy.scoring.jitter
        self._label_seeds: dict[tuple[str, ...], tuple[int, float]] = {
            lb.parts: (
                int(_unit("floor", lb.name) * 2**64),
                jitter * (2.0 * _unit("jitter", lb.name) - 1.0),
            )
            for lb in taxonomy.labels
        }
        # The emulator shares the machine with the gateway it serves, while the real
        # service runs elsewhere: repeated texts (load generators send the same body over
        # and over) are scored once, so its CPU does not crowd the system under test.
        self._memo: OrderedDict[tuple[DocText, int], _Scored] = OrderedDict()

    @classmethod
    def default(cls) -> KeywordModel:
        """The model of the shipped ``taxonomy.yaml``."""
        return cls(load_taxonomy())

    @classmethod
    def from_path(cls, path: str | Path | None) -> KeywordModel:
        """The model of a taxonomy file (None or "" = the shipped one)."""
        return cls(load_taxonomy(path))

    @property
    def label_names(self) -> frozenset[tuple[str, ...]]:
        return self.taxonomy.label_names

    def resolve_version(self, selector: str | int, *, allow_latest: bool = False) -> int | None:
        """``7`` / ``"7"`` / ``"live"`` / ``"staging"`` -> the version served, else None."""
        return self.taxonomy.resolve_version(str(selector), allow_latest=allow_latest)

    def model_info(self, version: int) -> dict[str, Any]:
        return {"version": version, "time": self.taxonomy.versions[version][0]}

    # -- scoring -------------------------------------------------------------------------

    def _probability(self, label: LabelDef, hits: int, boost: float, doc_seed: int) -> float:
        s = self.taxonomy.scoring
        label_seed, jitter = self._label_seeds[label.parts]
        if hits <= 0:
            # A stable per (label, document) number, cheaper than a hash per label.
            mixed = ((label_seed ^ doc_seed) * 0x9E3779B97F4A7C15) % 2**64
            return round(0.02 + 0.06 * mixed / 2**64, _ROUND)
        p = s.base + s.step * (1.0 - s.decay ** (hits - 1)) + jitter + boost
        return round(min(s.cap, max(0.0, p)), _ROUND)

    def _scored(self, doc: DocText, version: int) -> _Scored:
        key = (doc, version)
        scored = self._memo.get(key)
        if scored is None:
            scored = self._memo[key] = self._score(doc, version)
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return scored

    def _score(self, doc: DocText, version: int) -> _Scored:
        text = doc.searchable
        entities: list[FoundEntity] = []
        for part in doc.parts:
            entities.extend(find_entities(part.text, part.content_part, part.message_index))
        entity_counts: dict[str, int] = {}
        for ent in entities:
            entity_counts[ent.kind] = entity_counts.get(ent.kind, 0) + 1
        boost = self.taxonomy.versions[version][1]
        cap = self.taxonomy.scoring.max_hits_per_keyword
        doc_seed = int(_unit("floor", text) * 2**64)
        counts = self.taxonomy.count_keywords(text)
        probs: dict[tuple[str, ...], float] = {}
        for label in self._bottom_up:
            hits = sum(min(cap, counts.get(k, 0)) for k in label.keywords)
            hits += sum(min(cap, entity_counts.get(kind, 0)) for kind in label.entities)
            p = self._probability(label, hits, boost, doc_seed)
            probs[label.parts] = max(p, probs.get(label.parts, 0.0))
            if len(label.parts) > 1:
                parent = label.parts[:-1]
                probs[parent] = max(probs.get(parent, 0.0), probs[label.parts])
        sentiment, n_words = _polarity(self.taxonomy.sentiment, counts)
        properties = []
        for prop in self.taxonomy.properties:
            value, _ = _polarity(prop, counts)
            properties.append(
                {"property_id": prop.property_id, "property_name": prop.name, "value": value}
            )
        return _Scored(probs, entities, sentiment, n_words > 0, properties)

    def _select(
        self, probs: Mapping[tuple[str, ...], float], sel: Selection, sentiment: float | None
    ) -> list[dict[str, Any]]:
        auto = sel.threshold == "auto"
        cuts = self.taxonomy.auto_thresholds
        default_cut = cuts[0][1] if auto and cuts else float(sel.threshold)
        wanted = sel.labels if sel.labels is not None else dict.fromkeys(probs)
        out: list[dict[str, Any]] = []
        for parts, own in wanted.items():
            p = probs.get(parts)
            if p is None or p < (own if own is not None else default_cut):
                continue
            label: dict[str, Any] = {"name": list(parts), "probability": p}
            if sentiment is not None:
                label["sentiment"] = sentiment
            if auto:
                label["auto_thresholds"] = [name for name, cut in cuts if p >= cut]
            out.append(label)
        out.sort(key=lambda lb: (-lb["probability"], lb["name"]))
        return out

    def predict_texts(
        self, docs: Sequence[DocText], *, version: int, selection: Selection
    ) -> dict[str, Any]:
        """The ``predict`` / ``predict-raw-emails`` response (without ``comments``)."""
        predictions, entities, properties, sentiments = [], [], [], []
        for doc in docs:
            scored = self._scored(doc, version)
            label_sentiment = scored.sentiment if scored.has_sentiment else None
            predictions.append(self._select(scored.probabilities, selection, label_sentiment))
            entities.append([e.to_json() for e in _ordered(scored.entities)])
            properties.append([dict(prop) for prop in scored.properties])
            sentiments.append({"total": scored.sentiment})
        return {
            "status": "ok",
            "predictions": predictions,
            "entities": entities,
            "label_properties": properties,
            "sentiment": sentiments,
            "model": self.model_info(version),
        }

    def predict_uids(
        self, uids: Sequence[str], *, version: int, selection: Selection
    ) -> dict[str, Any]:
        """``predict-comments``: FAKE, deterministic predictions per uid.

        The emulator stores no comments, so each uid's sha256 picks one or two leaf labels
        and their probabilities. Useful for exercising a client, meaningless otherwise."""
        leaves = [lb.parts for lb in self.taxonomy.labels if not self._has_children(lb.parts)]
        boost = self.taxonomy.versions[version][1]
        predictions = []
        for uid in uids:
            digest = hashlib.sha256(uid.encode()).digest()
            chosen = [leaves[digest[0] % len(leaves)]]
            if digest[1] % 2:
                chosen.append(leaves[digest[2] % len(leaves)])
            probs: dict[tuple[str, ...], float] = {}
            for n, parts in enumerate(chosen):
                p = round(min(0.99, 0.3 + 0.65 * digest[3 + n] / 255 + boost), _ROUND)
                for depth in range(1, len(parts) + 1):
                    probs[parts[:depth]] = max(probs.get(parts[:depth], 0.0), p)
            tone = round(digest[6] / 255 * 2 - 1, _ROUND)
            props = [
                {"property_id": prop.property_id, "property_name": prop.name, "value": tone}
                for prop in self.taxonomy.properties
            ]
            predictions.append(
                {
                    "uid": uid,
                    "labels": self._select(probs, selection, None),
                    "entities": [],
                    "label_properties": props,
                }
            )
        return {"status": "ok", "predictions": predictions, "model": self.model_info(version)}

    def _has_children(self, parts: tuple[str, ...]) -> bool:
        n = len(parts)
        return any(len(o) > n and o[:n] == parts for o in self._by_parts)

    def validation(self, version: int) -> dict[str, Any]:
        """The ``GET .../validation`` response: the whole taxonomy plus canned stats."""
        labels = [{"name": lb.name, "parts": list(lb.parts)} for lb in self.taxonomy.labels]
        newest = version == max(self.taxonomy.versions)
        return {
            "status": "ok",
            "validation": {
                "version": version,
                "labels": labels,
                "entities": [
                    {"name": k, "title": v} for k, v in self.taxonomy.entity_titles.items()
                ],
                "num_labels": len(labels),
                "num_reviewed_comments": 1000 + 37 * len(labels),
                "num_amber_labels": 1,
                "num_red_labels": 0,
                "mean_average_precision_safe": 0.86 if newest else 0.83,
                "dataset_quality": "good",
                "dataset_score": 78,
                "balance": 0.91,
                "balance_quality": "good",
                "coverage": 0.88,
                "coverage_quality": "good",
                "all_labels_quality": "good",
                "underperforming_labels_quality": "average",
            },
        }


_PART_ORDER = {"subject": 0, "body": 1, "signature": 2}


def _ordered(entities: list[FoundEntity]) -> list[FoundEntity]:
    return sorted(
        entities,
        key=lambda e: (e.message_index, _PART_ORDER.get(e.content_part, 9), e.char_start),
    )

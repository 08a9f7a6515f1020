"""Typed results of the Communications Mining prediction routes.

The models accept what the API documents (``../shared/research/cm-api.md`` §3) and ignore
fields they do not know, so that a new field in the API never breaks routing. They are
frozen: a prediction is evidence, and nothing downstream may edit it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CommentPrediction",
    "DocumentPrediction",
    "Entity",
    "Label",
    "LabelProperty",
    "ModelInfo",
    "PredictionBatch",
    "TextSpan",
    "ValidationEntity",
    "ValidationLabel",
    "ValidationSummary",
    "join_label",
    "split_label",
]

LABEL_SEPARATOR = " > "


def join_label(parts: tuple[str, ...] | list[str]) -> str:
    """``("Finance", "Invoice")`` -> ``"Finance > Invoice"``."""
    return LABEL_SEPARATOR.join(parts)


def split_label(name: str) -> tuple[str, ...]:
    """``"Finance > Invoice"`` -> ``("Finance", "Invoice")``."""
    return tuple(p.strip() for p in name.split(">") if p.strip())


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Label(_Frozen):
    """One predicted label. Parents arrive as their own entries."""

    name: tuple[str, ...]
    probability: float = Field(ge=0.0, le=1.0)
    sentiment: float | None = None
    auto_thresholds: tuple[str, ...] | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name_parts(cls, value: Any) -> Any:
        # Dataset exports spell names as "A > B"; every other route as a list.
        if isinstance(value, str):
            return split_label(value)
        return value

    @field_validator("name")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a label name needs at least one part")
        return value

    @property
    def full_name(self) -> str:
        return join_label(self.name)


class TextSpan(_Frozen):
    content_part: str = "body"
    message_index: int = 0
    char_start: int
    char_end: int
    utf16_byte_start: int | None = None
    utf16_byte_end: int | None = None


class Entity(_Frozen):
    """A predicted entity. Older API versions send no ``span``/``kind``: both optional."""

    id: str | None = None
    name: str
    kind: str | None = None
    formatted_value: str
    probability: float | None = None
    span: TextSpan | None = None
    spans: tuple[TextSpan, ...] = ()
    capture_ids: tuple[int, ...] = ()

    @property
    def entity_kind(self) -> str:
        return self.kind or self.name


class LabelProperty(_Frozen):
    property_id: str | None = None
    property_name: str
    value: float


class ModelInfo(_Frozen):
    version: int
    time: str | None = None


class DocumentPrediction(_Frozen):
    """Everything the model said about one document."""

    labels: tuple[Label, ...] = ()
    entities: tuple[Entity, ...] = ()
    label_properties: tuple[LabelProperty, ...] = ()
    sentiment: float | None = None

    def label(self, name: str) -> Label | None:
        """The label with this exact ``A > B`` name, if predicted."""
        parts = split_label(name)
        for label in self.labels:
            if label.name == parts:
                return label
        return None

    def labels_summary(self) -> str:
        """``Finance > Invoice (0.92), Urgent (0.66)``: most probable first. The text of
        ``X-CM-Labels`` and of the ``{labels}`` placeholder; empty when no label."""
        ordered = sorted(self.labels, key=lambda lb: (-lb.probability, lb.name))
        return ", ".join(f"{lb.full_name} ({lb.probability:.2f})" for lb in ordered)

    @property
    def top_label(self) -> Label | None:
        """The most probable label, preferring the most specific on a tie."""
        if not self.labels:
            return None
        return max(self.labels, key=lambda lb: (lb.probability, len(lb.name)))


class PredictionBatch(_Frozen):
    """The answer to one predict call: one ``DocumentPrediction`` per document, in order.

    ``comments`` holds the comments the API parsed from raw emails, only when the request
    asked for them (``include_comments``); they are passed through untyped.
    """

    predictions: tuple[DocumentPrediction, ...]
    model: ModelInfo | None = None
    comments: tuple[dict[str, Any], ...] = ()

    @property
    def model_version(self) -> int | None:
        return self.model.version if self.model else None


class CommentPrediction(DocumentPrediction):
    """One item of ``predict-comments``: the comment's ``uid`` (``source_id.comment_id``)
    and what the model said about it."""

    uid: str


class ValidationLabel(_Frozen):
    """A label of the model's taxonomy. Parents are listed as labels of their own."""

    name: str
    parts: tuple[str, ...]


class ValidationEntity(_Frozen):
    name: str
    title: str | None = None


class ValidationSummary(_Frozen):
    """The ``validation`` route: how good the model is, and its taxonomy. The quality
    fields are ``poor|average|good|excellent`` (or ``none``), and null when the dataset
    has too little data."""

    version: int
    labels: tuple[ValidationLabel, ...] = ()
    entities: tuple[ValidationEntity, ...] = ()
    num_labels: int | None = None
    num_reviewed_comments: int | None = None
    num_amber_labels: int | None = None
    num_red_labels: int | None = None
    mean_average_precision_safe: float | None = None
    dataset_quality: str | None = None
    dataset_score: int | None = None
    balance: float | None = None
    balance_quality: str | None = None
    coverage: float | None = None
    coverage_quality: str | None = None
    all_labels_quality: str | None = None
    underperforming_labels_quality: str | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label as ``A > B``, in the API's order."""
        return tuple(
            join_label(label.parts) if label.parts else label.name for label in self.labels
        )

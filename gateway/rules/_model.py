"""The rule file as a pydantic model: the single source of truth for what a rule file
may contain. The loader validates with it and ``rules/schema.json`` is generated from it.

Checks that need more than one key (``min_probability`` <= ``max_probability``, exactly one
key per action...) raise ``PydanticCustomError`` with ``ctx["key"]`` naming the key to
point at, so that the error lands on that key's line.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._fields import (
    AddedHeaderName,
    Address,
    AddressList,
    AddressPatterns,
    HeaderName,
    LabelPattern,
    ListName,
    Probability,
    Regex,
    RemovedHeaderNames,
    ReplyText,
    RuleName,
    Sentiment,
    Size,
    SubjectPrefix,
    TemplateText,
)
from ._time import check_between, check_days, check_zone

__all__ = [
    "ACTION_KEYS",
    "CONDITION_KEYS",
    "ActionModel",
    "ConditionModel",
    "ListRef",
    "RuleFileModel",
    "RuleModel",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    def _given(self) -> list[str]:
        """The keys the author wrote, by their YAML spelling, in model order."""
        out = []
        for name, info in type(self).model_fields.items():
            if getattr(self, name) is not None:
                out.append(info.alias or name)
        return out


def _error(key: str, message: str) -> PydanticCustomError:
    # With a context the template is formatted: escape braces.
    return PydanticCustomError("rule", message.replace("{", "{{").replace("}", "}}"), {"key": key})


def _range(low_key: str, low: float | None, high_key: str, high: float | None) -> None:
    # Strict bounds: 'above: x, below: y' holds for x < v < y, so x >= y can never hold.
    if low is not None and high is not None and low >= high:
        raise _error(low_key, f"must be less than {high_key} ({high:g}), got {low:g}")


class SentimentCondition(_Strict):
    """Holds when the sentiment is strictly below and/or above the given bounds."""

    below: Sentiment | None = None
    above: Sentiment | None = None

    @model_validator(mode="after")
    def _check(self) -> SentimentCondition:
        if self.below is None and self.above is None:
            raise _error("", "sentiment needs 'below' and/or 'above'")
        _range("above", self.above, "below", self.below)
        return self


class EntityCondition(_Strict):
    """Holds when an entity of ``kind`` (case-insensitive) has a value the ``value``
    regex finds (``re.search``)."""

    kind: str | None = None
    value: Regex | None = None

    @model_validator(mode="after")
    def _check(self) -> EntityCondition:
        if self.kind is None and self.value is None:
            raise _error("", "entity needs 'kind' and/or 'value'")
        return self


class LabelPropertyCondition(_Strict):
    """Holds when the label property ``name`` is strictly below and/or above the bounds."""

    name: str = Field(min_length=1)
    below: float | None = None
    above: float | None = None

    @model_validator(mode="after")
    def _check(self) -> LabelPropertyCondition:
        if self.below is None and self.above is None:
            raise _error("name", "label_property needs 'below' and/or 'above'")
        _range("above", self.above, "below", self.below)
        return self


class HeaderCondition(_Strict):
    """Holds when a header ``name`` exists (or not), or one of its decoded values
    ``matches`` a regex (``re.search``) or ``contains`` a text (case-insensitive)."""

    name: HeaderName
    matches: Regex | None = None
    contains: str | None = Field(default=None, min_length=1)
    exists: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> HeaderCondition:
        tests = [k for k in self._given() if k != "name"]
        if len(tests) != 1:
            key = tests[1] if len(tests) > 1 else "name"
            raise _error(key, "header needs exactly one of 'matches', 'contains', 'exists'")
        return self


class SizeCondition(_Strict):
    """Holds when the message size in bytes is strictly above and/or below the bounds."""

    above: Size | None = None
    below: Size | None = None

    @model_validator(mode="after")
    def _check(self) -> SizeCondition:
        if self.below is None and self.above is None:
            raise _error("", "size needs 'above' and/or 'below'")
        _range("above", self.above, "below", self.below)
        return self


class AttachmentCondition(_Strict):
    """Holds when one attachment matches every glob given (case-insensitive)."""

    name: str | None = Field(default=None, min_length=1)
    content_type: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> AttachmentCondition:
        if self.name is None and self.content_type is None:
            raise _error("", "attachment needs 'name' and/or 'content_type'")
        return self


class TimeCondition(_Strict):
    """Holds when the message is processed inside the window, on ``tz``'s wall clock:
    ``days`` (``mon-fri``, ``sat,sun`` or a list), ``between`` ``"HH:MM-HH:MM"`` (may
    wrap midnight), ``tz`` an IANA zone (default UTC)."""

    days: Annotated[str | list[str], AfterValidator(check_days)] | None = None
    between: Annotated[str, AfterValidator(check_between)] | None = None
    tz: Annotated[str, AfterValidator(check_zone)] = "UTC"

    @model_validator(mode="after")
    def _check(self) -> TimeCondition:
        if self.days is None and self.between is None:
            raise _error("", "time needs 'days' and/or 'between'")
        return self


class ListRef(_Strict):
    """``{list: NAME}``: the patterns of a list file the rule file's ``lists`` names."""

    list_: ListName = Field(alias="list")


class ThreadCondition(_Strict):
    """Holds when an earlier message of the conversation (References / In-Reply-To)
    matched the rule ``matched``."""

    matched: RuleName


class ConditionModel(_Strict):
    """A mapping of conditions; every key in it must hold (an implicit ``all``)."""

    label: LabelPattern | None = None
    min_probability: Probability | None = None
    max_probability: Probability | None = None
    sentiment: SentimentCondition | None = None
    entity: EntityCondition | None = None
    label_property: LabelPropertyCondition | None = None
    header: HeaderCondition | None = None
    from_: AddressPatterns | ListRef | None = Field(default=None, alias="from")
    to: AddressPatterns | ListRef | None = None
    size: SizeCondition | None = None
    attachment: AttachmentCondition | None = None
    unclassified: bool | None = None
    time: TimeCondition | None = None
    thread: ThreadCondition | None = None
    all: list[ConditionModel] | None = Field(default=None, min_length=1)
    any: list[ConditionModel] | None = Field(default=None, min_length=1)
    not_: ConditionModel | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _check(self) -> ConditionModel:
        given = self._given()
        if not given:
            raise _error("", "empty condition: give at least one condition key")
        for key in ("min_probability", "max_probability"):
            if key in given and self.label is None:
                raise _error(key, f"{key} needs a 'label' in the same mapping")
        low, high = self.min_probability, self.max_probability
        if low is not None and high is not None and low > high:
            raise _error(
                "min_probability",
                f"must be <= max_probability ({high:g}), got {low:g}",
            )
        return self


CONDITION_KEYS: tuple[str, ...] = tuple(
    f.alias or n for n, f in ConditionModel.model_fields.items()
)


# A [downstream.routes.NAME] table of the configuration (checked against it at load).
RouteName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ActionModel(_Strict):
    """One action: a mapping with exactly one key."""

    add_header: dict[AddedHeaderName, TemplateText] | None = Field(default=None, min_length=1)
    prefix_subject: SubjectPrefix | None = None
    bcc: AddressList | None = None
    redirect: AddressList | None = None
    quarantine: Address | None = None
    reject: ReplyText | None = None
    defer: ReplyText | None = None
    discard: Literal[True] | None = None
    remove_header: RemovedHeaderNames | None = None
    route: RouteName | None = None
    hold: ReplyText | None = None

    @model_validator(mode="after")
    def _check(self) -> ActionModel:
        given = self._given()
        if len(given) != 1:
            raise _error(
                "",
                "an action is a mapping with exactly one key, got "
                + (f"{len(given)}: " + ", ".join(given) if given else "none"),
            )
        return self


ACTION_KEYS: tuple[str, ...] = tuple(ActionModel.model_fields)


class RuleModel(_Strict):
    """One rule: when its condition holds, its actions apply."""

    name: RuleName
    description: str | None = None
    enabled: bool = True
    audit: bool = False
    when: ConditionModel | None = None
    actions: list[ActionModel] = Field(default_factory=list)
    stop: bool = False


class RuleFileModel(_Strict):
    """A cm-gateway rule file (YAML). Rules are evaluated in order, file after file."""

    model_config = ConfigDict(
        title="cm-gateway rule file",
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
    )

    description: str | None = None
    audit: bool = False
    lists: dict[ListName, str] | None = None
    rules: list[RuleModel]

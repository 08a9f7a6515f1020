"""``classifier.provider`` -> the ``Classifier`` that serves it.

communications-mining   CommunicationsMiningClient on the tenant (token from env)
custom                  the same client, pointed at the user's URL and header
emulator                the keyword model in-process (no HTTP, no token, no bill)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.config import Config
from gateway.context import Classifier
from gateway.errors import ClassifierError, ConfigError, NotFoundError
from gateway.predictions import ValidationSummary

from ._client import CommunicationsMiningClient
from ._responses import parse_validation
from ._retry import RetryPolicy

__all__ = ["make_classifier", "model_validation"]


def make_classifier(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    model_version: int | str | None = None,
    retry: RetryPolicy | None = None,
    on_retry: Callable[[ClassifierError], None] | None = None,
) -> Classifier:
    """The classifier ``config`` asks for. ``model_version`` overrides the config's (for
    a shadow model); ``on_retry(error)`` is called before each retry of an API call.
    Raises ``ConfigError`` naming the key when a token/secret is missing or the emulator
    does not serve the version."""
    settings = config.classifier
    if settings.provider == "emulator":
        # Imported here: the emulator package loads the taxonomy and is not needed otherwise.
        from gateway.emulator import EmulatorClassifier

        if model_version is not None:
            settings = settings.model_copy(update={"model_version": model_version})
        try:
            return EmulatorClassifier(settings)
        except NotFoundError as exc:
            raise ConfigError(
                str(exc), file=config.source, where="classifier.model_version"
            ) from None
    try:
        return CommunicationsMiningClient.from_config(
            settings, env=env, model_version=model_version, retry=retry, on_retry=on_retry
        )
    except ConfigError as exc:
        raise ConfigError(exc.message, file=config.source, where=exc.where) from None


async def model_validation(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    version: int | str | None = None,
) -> tuple[str, ValidationSummary]:
    """The model's validation stats and taxonomy, with a description of where they came
    from: the tenant's ``validation`` route, or the emulator's taxonomy in-process.

    Raises ``ConfigError`` for a custom provider (it has no validation route) and
    ``ClassifierError`` when the API fails."""
    settings = config.classifier
    if settings.provider == "custom":
        raise ConfigError(
            "the custom provider has no validation route; this needs"
            " provider = 'communications-mining' or 'emulator'",
            file=config.source,
            where="classifier.provider",
        )
    classifier = make_classifier(config, env=env)
    try:
        if isinstance(classifier, CommunicationsMiningClient):
            return classifier.description, await classifier.validation(version)
        from gateway.emulator import EmulatorClassifier

        assert isinstance(classifier, EmulatorClassifier)
        selector = settings.model_version if version is None else version
        resolved = classifier.model.resolve_version(selector, allow_latest=True)
        if resolved is None:
            raise NotFoundError(f"the emulator serves no model version {selector!r}", status=404)
        return classifier.description, parse_validation(classifier.model.validation(resolved))
    finally:
        await classifier.aclose()

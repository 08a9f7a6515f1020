"""Every next hop of one configuration: ``[downstream]`` (the default) and each
``[downstream.routes.NAME]`` table, the ``route`` rule action's targets. Each has its own
connection pool, readiness probe and metrics label (``route="default"`` or its name)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from gateway.config import Config

from ._delivery import Delivery, make_delivery

__all__ = ["DEFAULT_ROUTE", "NextHops", "make_next_hops"]

DEFAULT_ROUTE = "default"


class NextHops(Mapping[str, Delivery]):
    """Route name -> ``Delivery``; ``default`` is ``[downstream]``."""

    def __init__(self, default: Delivery, routes: Mapping[str, Delivery] | None = None) -> None:
        self.default = default
        self._hops: dict[str, Delivery] = {DEFAULT_ROUTE: default, **(routes or {})}

    def __getitem__(self, name: str) -> Delivery:
        return self._hops[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._hops)

    def __len__(self) -> int:
        return len(self._hops)

    @property
    def routes(self) -> tuple[str, ...]:
        """The route names a ``route`` action may use (not ``default``)."""
        return tuple(n for n in self._hops if n != DEFAULT_ROUTE)

    def pick(self, route: str | None) -> Delivery:
        """The next hop for a decision's ``route`` (None: the default). A name the
        configuration lacks raises ``KeyError``: the rules loader refuses such rules."""
        return self.default if route is None else self._hops[route]

    @property
    def description(self) -> str:
        """For the start-up log: ``smtp://... (+ archive=lmtp://...)``."""
        extra = [f"{n}={d.description}" for n, d in self._hops.items() if n != DEFAULT_ROUTE]
        return self.default.description + (f" (+ {', '.join(extra)})" if extra else "")

    async def aclose(self) -> None:
        """Close every next hop (the first error is raised after all were tried)."""
        errors: list[BaseException] = []
        for delivery in self._hops.values():
            try:
                await delivery.aclose()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def make_next_hops(config: Config, default: Delivery | None = None) -> NextHops:
    """``[downstream]`` (or ``default``, for tests) and one ``Delivery`` per route."""
    routes = {name: make_delivery(config, hop) for name, hop in config.downstream.routes.items()}
    return NextHops(default or make_delivery(config), routes)

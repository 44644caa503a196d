"""The routing file: which event reaches which handler, in one YAML file.

Shape (``docs/routing.md`` has the full reference):

    version: 1
    registry: app.events:registry          # optional EventRegistry for typed events
    routes:
      order-created:                       # route name
        pattern: {type: [orders.OrderCreated], data: {currency: [JP, US]}}
        subscribers: [billing, notify]
    subscribers:
      billing:
        handler: app.billing:charge        # or module:Class.method
        input: {order_id: $.data.order_id} # optional, like an input transformer
        retry: {max_attempts: 5, initial_delay: 1, max_delay: 300, multiplier: 2, jitter: 0.2}
        timeout: 30                        # seconds per attempt
        ordering: per-stream               # or none
    process_managers:
      reservations:
        manager: app.sagas:ReservationSaga
    schedules:
      nightly-report:
        cron: "0 3 * * *"                  # or rate: "5 minutes"
        command: app.commands:BuildReport
        args: {kind: nightly}

Loading validates the shape with pydantic, parses every pattern, and
imports every handler, manager and command class, so a typo fails at load
time, not when the first event arrives. Every error is a
`RoutingFileError` naming the file, the line
(from PyYAML's node marks) and the dotted path of the offending value.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cqrs_kit.errors import PatternError, RoutingFileError, UsageError
from cqrs_kit.events import EventRegistry
from cqrs_kit.routing.handlers import compile_path
from cqrs_kit.routing.patterns import EventPattern
from cqrs_kit.routing.process_managers import ProcessManager
from cqrs_kit.routing.subscribers import Ordering, RetryPolicy, Subscriber
from cqrs_kit.scheduling import RecurringSchedule, derived_id, parse_rate, validate_cron

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=120)]
Target = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryModel(_Model):
    """``retry:`` of a subscriber or process manager."""

    max_attempts: int = Field(5, ge=1, le=1000)
    initial_delay: float = Field(1.0, ge=0)
    max_delay: float = Field(300.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)

    def policy(self) -> RetryPolicy:
        """As a runtime policy."""
        return RetryPolicy(**self.model_dump())


class RouteModel(_Model):
    """One entry of ``routes:``."""

    pattern: dict[str, Any]
    subscribers: list[Name] = Field(min_length=1)
    description: str | None = None


class SubscriberModel(_Model):
    """One entry of ``subscribers:``."""

    handler: Target
    input: dict[str, str] | None = None
    retry: RetryModel = RetryModel()
    timeout: float | None = Field(30.0, gt=0)
    ordering: Literal["per-stream", "none"] = "per-stream"
    description: str | None = None


class ProcessManagerModel(_Model):
    """One entry of ``process_managers:``."""

    manager: Target
    retry: RetryModel = RetryModel()
    timeout: float | None = Field(30.0, gt=0)


class ScheduleModel(_Model):
    """One entry of ``schedules:``."""

    cron: str | None = None
    rate: str | None = None
    command: Target
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleModel:
        if (self.cron is None) == (self.rate is None):
            raise ValueError("give exactly one of cron or rate")
        if self.cron is not None:
            validate_cron(self.cron)
        if self.rate is not None:
            parse_rate(self.rate)
        return self


class RoutingFileModel(_Model):
    """The whole file."""

    version: Literal[1] = 1
    registry: Target | None = None
    routes: dict[Name, RouteModel] = Field(default_factory=dict)
    subscribers: dict[Name, SubscriberModel] = Field(default_factory=dict)
    process_managers: dict[Name, ProcessManagerModel] = Field(default_factory=dict)
    schedules: dict[Name, ScheduleModel] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """A loaded route: a parsed pattern and the subscribers it feeds."""

    name: str
    pattern: EventPattern
    source: Mapping[str, Any]
    subscribers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProcessManagerSpec:
    """A loaded process-manager entry."""

    id: str
    manager: ProcessManager[Any]
    target: str
    retry: RetryPolicy
    timeout: float | None


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One line of ``cqrs-kit routes show``: which events reach which handler."""

    route: str
    pattern: str
    subscriber: str
    handler: str
    retry: str
    timeout: str
    ordering: str


def _retry_summary(policy: RetryPolicy) -> str:
    if policy.max_attempts == 1:
        return "no retry"
    return (
        f"{policy.max_attempts}x {_seconds(policy.initial_delay)}"
        f"..{_seconds(policy.max_delay)} x{policy.multiplier:g}"
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 60:g}m" if value >= 60 and value % 60 == 0 else f"{value:g}s"


def summarize_pattern(source: Mapping[str, Any], width: int = 60) -> str:
    """A one-line rendering of a pattern, shortened to ``width`` characters."""
    text = json.dumps(source, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class RoutingConfig:
    """A loaded routing file.

    Attributes:
        file: Where it came from.
        routes: The routes, in file order.
        subscribers: Ready-to-run subscribers by id.
        handlers: ``module:function`` of each subscriber's handler, by id.
        process_managers: Process managers by id.
        schedules: Recurring schedules.
        registry: The event registry the file names, if any.
    """

    file: str
    routes: tuple[Route, ...]
    subscribers: Mapping[str, Subscriber]
    handlers: Mapping[str, str]
    process_managers: Mapping[str, ProcessManagerSpec] = field(default_factory=dict)
    schedules: tuple[RecurringSchedule, ...] = ()
    registry: EventRegistry | None = None

    def subscribers_for(self, document: Mapping[str, Any]) -> list[str]:
        """Ids of the subscribers (and process managers) an event document reaches."""
        reached = [sid for sid, sub in self.subscribers.items() if sub.matches(document)]
        reached += [
            pid
            for pid, spec in self.process_managers.items()
            if document.get("type") in spec.manager.handled_types()
        ]
        return reached

    def table(self) -> list[RouteRow]:
        """One row per (route, subscriber), process managers last."""
        rows = []
        for route in self.routes:
            for sid in route.subscribers:
                sub = self.subscribers[sid]
                rows.append(
                    RouteRow(
                        route=route.name,
                        pattern=summarize_pattern(route.source),
                        subscriber=sid,
                        handler=self.handlers[sid],
                        retry=_retry_summary(sub.retry),
                        timeout=_seconds(sub.timeout),
                        ordering=sub.ordering.value,
                    )
                )
        for pid, spec in self.process_managers.items():
            for event_type, method in spec.manager.handler_names().items():
                rows.append(
                    RouteRow(
                        route="(process manager)",
                        pattern=summarize_pattern({"type": [event_type]}),
                        subscriber=pid,
                        handler=f"{spec.target}.{method}",
                        retry=_retry_summary(spec.retry),
                        timeout=_seconds(spec.timeout),
                        ordering="per-correlation",
                    )
                )
        return rows


# -- locating errors in the YAML ------------------------------------------------------------

PathStep = str | int
_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _render(path: Sequence[PathStep]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _split(path: str) -> list[PathStep]:
    return [int(m.group(1)) if m.group(1) else m.group(2) for m in _PATH_PART.finditer(path)]


def _line_at(root: yaml.Node | None, path: Sequence[PathStep]) -> int | None:
    """The 1-based line of the deepest element along ``path``.

    For a mapping entry that is the line of its key, so that an error about a
    block-style value points at the line that names it.
    """
    if root is None:
        return None
    node: yaml.Node = root
    line = root.start_mark.line
    for step in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(step):
                    child, line = value, key.start_mark.line
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(step, int)
            and 0 <= step < len(node.value)
        ):
            child = node.value[step]
            line = child.start_mark.line
        if child is None:
            break
        node = child
    return line + 1


class _Source:
    """The YAML text of a routing file and its node tree, for error locations."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        try:
            self.root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            raise RoutingFileError(
                file, line=line, path="", reason=f"invalid YAML: {problem}"
            ) from None
        if self.root is not None:
            self._check_duplicates(self.root, [])

    def _check_duplicates(self, node: yaml.Node, path: list[PathStep]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                if name in seen:
                    raise RoutingFileError(
                        self.file,
                        line=key.start_mark.line + 1,
                        path=_render([*path, name]),
                        reason=f"duplicate key {name!r}",
                    )
                seen.add(name)
                self._check_duplicates(value, [*path, name])
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicates(item, [*path, index])

    def line(self, path: Sequence[PathStep]) -> int | None:
        return _line_at(self.root, path)

    def error(self, path: Sequence[PathStep], reason: str) -> RoutingFileError:
        return RoutingFileError(self.file, line=self.line(path), path=_render(path), reason=reason)


# -- loading ------------------------------------------------------------------------------


def load_routing(
    path: str | Path, *, services: Mapping[type, object] | None = None
) -> RoutingConfig:
    """Load and validate a routing file, importing every handler it names.

    Args:
        path: The YAML file.
        services: Instances to use for ``module:Class.method`` handlers and for
            process managers, by class (otherwise the class is built with no
            arguments).

    Raises:
        RoutingFileError: The file is unreadable, invalid, or names something
            that cannot be imported.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutingFileError(file, line=None, path="", reason=f"cannot read: {exc}") from exc
    return parse_routing(text, file=file, services=services)


def parse_routing(
    text: str, *, file: str = "<routing>", services: Mapping[type, object] | None = None
) -> RoutingConfig:
    """Like `load_routing`, from YAML text."""
    source = _Source(text, file)
    data = yaml.safe_load(text)
    if data is None:
        raise source.error([], "the file is empty; it needs at least routes and subscribers")
    if not isinstance(data, dict):
        raise source.error([], f"the top level must be a mapping, not {type(data).__name__}")
    try:
        model = RoutingFileModel.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        reason = first["msg"] + (f" (and {more} more error{'s' * (more > 1)})" if more else "")
        raise source.error(list(first["loc"]), reason) from None
    return _Loader(source, model, services or {}).load()


class _Loader:
    def __init__(
        self, source: _Source, model: RoutingFileModel, services: Mapping[type, object]
    ) -> None:
        self.source = source
        self.model = model
        self.services = services

    def load(self) -> RoutingConfig:
        model = self.model
        registry = None
        if model.registry is not None:
            registry = self._import(model.registry, ["registry"])
            if not isinstance(registry, EventRegistry):
                raise self.source.error(["registry"], f"{model.registry} is not an EventRegistry")
        routes = [self._route(name, route) for name, route in model.routes.items()]
        patterns: dict[str, list[EventPattern]] = {sid: [] for sid in model.subscribers}
        names: dict[str, list[str]] = {sid: [] for sid in model.subscribers}
        for route in routes:
            for index, sid in enumerate(route.subscribers):
                if sid not in model.subscribers:
                    known = ", ".join(sorted(model.subscribers)) or "none"
                    raise self.source.error(
                        ["routes", route.name, "subscribers", index],
                        f"unknown subscriber {sid!r} (defined: {known})",
                    )
                patterns[sid].append(route.pattern)
                names[sid].append(route.name)
        subscribers: dict[str, Subscriber] = {}
        for sid, spec in model.subscribers.items():
            if not patterns[sid]:
                raise self.source.error(
                    ["subscribers", sid], f"subscriber {sid!r} is not named by any route"
                )
            subscribers[sid] = self._subscriber(sid, spec, patterns[sid], names[sid])
        clash = sorted(set(model.subscribers) & set(model.process_managers))
        if clash:
            raise self.source.error(
                ["process_managers", clash[0]], f"{clash[0]!r} is already a subscriber id"
            )
        managers = {pid: self._manager(pid, spec) for pid, spec in model.process_managers.items()}
        schedules = tuple(self._schedule(name, spec) for name, spec in model.schedules.items())
        return RoutingConfig(
            file=self.source.file,
            routes=tuple(routes),
            subscribers=subscribers,
            handlers={sid: spec.handler for sid, spec in model.subscribers.items()},
            process_managers=managers,
            schedules=schedules,
            registry=registry,
        )

    def _route(self, name: str, route: RouteModel) -> Route:
        try:
            pattern = EventPattern.parse(route.pattern)
        except PatternError as exc:
            where: list[PathStep] = ["routes", name, "pattern", *_split(exc.path)]
            raise self.source.error(where, exc.reason) from None
        return Route(name, pattern, route.pattern, tuple(route.subscribers))

    def _subscriber(
        self, sid: str, spec: SubscriberModel, patterns: list[EventPattern], routes: list[str]
    ) -> Subscriber:
        where: list[PathStep] = ["subscribers", sid]
        for key, json_path in (spec.input or {}).items():
            try:
                compile_path(json_path)
            except ValueError as exc:
                raise self.source.error([*where, "input", key], str(exc)) from None
        handler = self._callable(spec.handler, [*where, "handler"])
        try:
            return Subscriber(
                sid,
                handler,
                patterns=patterns,
                routes=routes,
                input=spec.input,
                retry=spec.retry.policy(),
                timeout=spec.timeout,
                ordering=Ordering(spec.ordering),
            )
        except UsageError as exc:
            field_path = (
                [*where, "input"] if exc.code == "bad-input-mapping" else [*where, "handler"]
            )
            raise self.source.error(field_path, str(exc)) from None

    def _manager(self, pid: str, spec: ProcessManagerModel) -> ProcessManagerSpec:
        where: list[PathStep] = ["process_managers", pid, "manager"]
        cls = self._import(spec.manager, where)
        if not (isinstance(cls, type) and issubclass(cls, ProcessManager)):
            raise self.source.error(where, f"{spec.manager} is not a ProcessManager subclass")
        instance = self._instance(cls, where)
        assert isinstance(instance, ProcessManager)
        return ProcessManagerSpec(pid, instance, spec.manager, spec.retry.policy(), spec.timeout)

    def _schedule(self, name: str, spec: ScheduleModel) -> RecurringSchedule:
        where: list[PathStep] = ["schedules", name]
        cls = self._import(spec.command, [*where, "command"])
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise self.source.error([*where, "command"], f"{spec.command} is not a model class")
        probe = dict(spec.args)
        if "command_id" in cls.model_fields:
            probe["command_id"] = derived_id("probe", name)
        try:
            cls.model_validate(probe)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise self.source.error(
                [*where, "args", *err["loc"]], f"{spec.command}: {err['msg']}"
            ) from None
        return RecurringSchedule(
            name=name,
            command_type=cls,
            args=spec.args,
            cron=spec.cron,
            rate=parse_rate(spec.rate) if spec.rate is not None else None,
        )

    # -- imports --------------------------------------------------------------------------

    def _import(self, target: str, where: list[PathStep]) -> Any:
        module_name, _, attr_path = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise self.source.error(where, f"cannot import module {module_name!r}: {exc}") from None
        except Exception as exc:
            raise self.source.error(
                where, f"importing module {module_name!r} raised {type(exc).__name__}: {exc}"
            ) from None
        walked = module_name
        for part in attr_path.split("."):
            if not hasattr(obj, part):
                raise self.source.error(where, f"{walked!r} has no attribute {part!r}")
            obj = getattr(obj, part)
            walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
        return obj

    def _instance(self, cls: type, where: list[PathStep]) -> object:
        if cls in self.services:
            return self.services[cls]
        try:
            return cls()
        except TypeError as exc:
            raise self.source.error(
                where,
                f"cannot create {cls.__qualname__}() without arguments ({exc}); pass an "
                "instance with services={Class: instance}",
            ) from None

    def _callable(self, target: str, where: list[PathStep]) -> Any:
        module_name, _, attr_path = target.partition(":")
        owner_name, _, method = attr_path.rpartition(".")
        if owner_name:
            owner = self._import(f"{module_name}:{owner_name}", where)
            if isinstance(owner, type):
                try:
                    raw = inspect.getattr_static(owner, method)
                except AttributeError:
                    raise self.source.error(
                        where, f"{owner_name} has no attribute {method!r}"
                    ) from None
                if isinstance(raw, staticmethod | classmethod):
                    return getattr(owner, method)
                return getattr(self._instance(owner, where), method)
            if not hasattr(owner, method):
                raise self.source.error(where, f"{owner_name!r} has no attribute {method!r}")
            return getattr(owner, method)
        return self._import(target, where)

"""Write Cairn backup adapters in Python.

An adapter is a WebAssembly component built with componentize-py against
the WIT package `cairn:adapter@0.3.0`. It decides what to back up and how to
restore it; the Cairn host moves the bytes. Write a class and export it::

    import cairn_kit as kit
    from cairn_kit import archive, snapshot

    class Hello(kit.Adapter):
        @dataclasses.dataclass
        class Config:
            greeting: str = "hello"

        def info(self):
            return kit.info("hello", "0.1.0", "Backs up one greeting.")

        def backup(self, config):
            with archive.begin_stream("/hello.txt", kit.metadata(0o644)) as w:
                w.write(config.greeting.encode())
                w.finish()
            return kit.backup_summary(files=1)

        ...

    WitWorld, Configuration = kit.export(Hello)

What the kit does for you:

* the JSON configuration becomes a dict, or the adapter's `Config`
  dataclass when it has one (kebab-case keys map to snake_case fields; an
  unknown key, a missing one or a wrong type is `invalid-config` naming the
  key);
* every uncaught exception becomes `adapter-error.other` carrying the
  traceback, so the host reports where it happened instead of a bare trap;
  raise `InvalidConfig`, `NotFound`, `Denied`, `Io`, `Corrupt` or `Other`
  to return that case; an error a host call raised passes through as it is;
* records get constructors with defaults (`metadata`, `info`,
  `backup_summary`, `restore_summary`, `verify_report`, `footprint`);
* `log.info(...)` and friends write into the host's log.

The generated bindings (`wit_world`) exist only inside componentize-py's
build; `cairn_kit` re-exports the interfaces an adapter calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import traceback
import typing

from componentize_py_types import Err
from wit_world.exports.configuration import Footprint
from wit_world.imports import archive, fs, process, secrets, snapshot, types
from wit_world.imports import log as _log
from wit_world.imports.types import (
    AdapterInfo,
    BackupSummary,
    Capability,
    EntryKind,
    Metadata,
    RestoreSummary,
    Timestamp,
    VerifyReport,
)

__all__ = [
    "Adapter", "export", "Error", "InvalidConfig", "NotFound", "Denied", "Io", "Corrupt",
    "Other", "info", "metadata", "backup_summary", "restore_summary", "verify_report",
    "footprint", "drill_config", "log", "archive", "snapshot", "fs", "process", "secrets",
    "Capability", "EntryKind", "Metadata", "Timestamp", "Footprint", "BackupSummary",
    "RestoreSummary", "VerifyReport", "AdapterInfo",
]


# --- Errors -----------------------------------------------------------------

class Error(Exception):
    """An adapter error; raise a subclass to return that WIT case."""

    case = types.AdapterError_Other

    def to_wit(self):
        return self.case(str(self))


class InvalidConfig(Error):
    """The configuration is invalid. Retrying will not help."""

    case = types.AdapterError_InvalidConfig


class NotFound(Error):
    """A path or entry does not exist."""

    case = types.AdapterError_NotFound


class Denied(Error):
    """The job does not grant this path, program or endpoint."""

    case = types.AdapterError_Denied


class Io(Error):
    """An I/O error; a retry may help."""

    case = types.AdapterError_Io


class Corrupt(Error):
    """The repository's data is damaged or missing."""

    case = types.AdapterError_Corrupt


class Other(Error):
    """Anything else."""

    case = types.AdapterError_Other


def _guard(fn):
    """Every exception escaping `fn` becomes `Err(adapter-error)`: a host
    error as it is, a kit error as its case, anything else as `other` with
    the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Err:
            raise
        except Error as e:
            raise Err(e.to_wit()) from None
        except BaseException:  # noqa: BLE001 - SystemExit and RecursionError too
            raise Err(types.AdapterError_Other(traceback.format_exc().rstrip())) from None

    return wrapper


# --- Records with defaults --------------------------------------------------

def info(name: str, version: str, description: str, needs=()) -> AdapterInfo:
    """Who the adapter is; `needs` lists `Capability` values."""
    return AdapterInfo(name=name, version=version, description=description, needs=list(needs))


def metadata(mode: int = 0o644, *, mtime: float | None = None, uid: int | None = None,
             gid: int | None = None, size: int | None = None) -> Metadata:
    """Metadata of an entry: permission bits, and what else is known."""
    stamp = None
    if mtime is not None:
        seconds = int(mtime // 1)
        stamp = Timestamp(seconds=seconds, nanoseconds=int(round((mtime - seconds) * 1e9)) % 10**9)
    return Metadata(mode=mode, mtime=stamp, atime=None, ctime=None, uid=uid, gid=gid,
                    size=size, inode=None, device=None, links=None)


def backup_summary(files: int = 0, directories: int = 0, symlinks: int = 0,
                   skipped: int = 0) -> BackupSummary:
    return BackupSummary(files=files, directories=directories, symlinks=symlinks, skipped=skipped)


def restore_summary(files: int = 0, directories: int = 0, symlinks: int = 0,
                    bytes: int = 0) -> RestoreSummary:  # noqa: A002 - the WIT field's name
    return RestoreSummary(files=files, directories=directories, symlinks=symlinks, bytes=bytes)


def verify_report(entries: int = 0, bytes: int = 0, problems=()) -> VerifyReport:  # noqa: A002
    return VerifyReport(entries=entries, bytes=bytes, problems=list(problems))


def footprint(reads=(), writes=()) -> Footprint:
    """What a job's settings touch: resource names such as
    `redis://10.0.0.5:6379/3`; one ending in `/` covers every name under it."""
    return Footprint(reads=list(reads), writes=list(writes))


def drill_config(config: dict, drill_set: dict) -> dict:
    """The configuration a drill restores with: `config` with the drill's
    `set` applied key by key, as the host applies it."""
    merged = dict(config)
    merged.update(drill_set)
    return merged


# --- Logging ----------------------------------------------------------------

class _Log:
    """`log.info("...")`: one line in the host's log, tagged with the adapter."""

    def trace(self, message: str) -> None:
        _log.write(_log.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        _log.write(_log.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        _log.write(_log.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        _log.write(_log.Level.WARN, str(message))

    def error(self, message: str) -> None:
        _log.write(_log.Level.ERROR, str(message))


log = _Log()


# --- Configuration ----------------------------------------------------------

def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


def _parse_json(text: str, what: str) -> dict:
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError as e:
        raise InvalidConfig(f"{what} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidConfig(f"{what} is not a JSON object")
    return value


def _matches(value, hint) -> bool:
    """Whether a JSON value fits a dataclass field's annotation: str, int,
    float, bool, None, list[T], tuple[...], dict[str, T], Literal, Enum,
    a nested dataclass, and unions of those. Any other annotation is
    refused when the config is parsed, so nothing passes unchecked."""
    if hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, __import__("enum").Enum):
        return any(value == m.value for m in hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            return False
        try:
            parse(hint, value)
        except InvalidConfig:
            return False
        return True
    if origin is tuple or hint is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            return False
        if args and args[-1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_matches(v, h) for v, h in zip(value, args)))
    if origin is typing.Union or (sys.version_info >= (3, 10) and origin is __import__("types").UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, typing.List) or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin in (dict, typing.Dict) or hint is dict:
        args = typing.get_args(hint)
        return isinstance(value, dict) and (not args or all(_matches(v, args[1]) for v in value.values()))
    raise InvalidConfig(f"the kit cannot check a field annotated {hint!r}; use str, int, float, bool, list, tuple, dict, Literal, an Enum or a dataclass")


def parse(cls, value: dict, what: str = "config"):
    """`value` as dataclass `cls`: kebab-case keys map to snake_case fields;
    an unknown key, a missing required one or a value of the wrong type is
    `InvalidConfig` naming the key."""
    if cls is None:
        return value
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    given = {}
    for key, v in value.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(n.replace("_", "-") for n in fields)) or "none"
            raise InvalidConfig(f"{what}: unknown key {key!r} (known keys: {known})")
        if not _matches(v, hints.get(name)):
            raise InvalidConfig(f"{what}: {key}: {json.dumps(v)} is not a {hints.get(name)}")
        given[name] = v
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in given:
            raise InvalidConfig(f"{what}: missing key {name.replace('_', '-')!r}")
    # Enum and nested dataclass fields get their types, not the raw JSON.
    for name, v in list(given.items()):
        hint = hints.get(name)
        # An optional dataclass or Enum: the member of the union it is.
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        union = typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None))
        if v is not None and union and len(options) == 1:
            hint = options[0]
        if isinstance(hint, type) and issubclass(hint, __import__("enum").Enum):
            given[name] = hint(v)
        elif dataclasses.is_dataclass(hint):
            given[name] = parse(hint, v, f"{what}: {name.replace('_', '-')}")
    return cls(**given)


# --- The adapter ------------------------------------------------------------

class Adapter:
    """Base class of an adapter. Override `info`, `backup`, `restore` and
    `verify`; `check` has a default. Set `Config` (a dataclass) to receive
    the configuration as one; without it, configurations are dicts."""

    Config = None

    def info(self) -> AdapterInfo:
        raise NotImplementedError("the adapter defines no info()")

    def backup(self, config) -> BackupSummary:
        raise NotImplementedError("the adapter defines no backup()")

    def restore(self, config) -> RestoreSummary:
        raise NotImplementedError("the adapter defines no restore()")

    def verify(self, config) -> VerifyReport:
        raise NotImplementedError("the adapter defines no verify()")

    def check(self, config, drill_set: dict | None) -> Footprint:
        """Check a job's settings without reaching the service, and say what
        they touch. The default parses `config` (as `Config` when set) and,
        when the drill sets anything, the drill's configuration; it names
        nothing. Override it when a drill restores into a target the
        settings name, so the host can refuse one that would write what a
        job backs up."""
        if drill_set:
            parse(self.Config, drill_config(self._raw, drill_set), "with the drill's set")
        return footprint()


def export(adapter_class):
    """The `WitWorld` and `Configuration` classes componentize-py looks for
    in the app module: `WitWorld, Configuration = export(MyAdapter)`."""

    adapter = adapter_class()

    def config_of(text: str):
        raw = _parse_json(text, "config")
        adapter._raw = raw
        return parse(adapter.Config, raw)

    class WitWorld:
        def info(self) -> AdapterInfo:
            # `info` has no error case: print the traceback (the host shows
            # the end of standard error with the trap) and trap.
            try:
                return adapter.info()
            except BaseException:
                traceback.print_exc()
                raise

        @_guard
        def backup(self, config: str) -> BackupSummary:
            return adapter.backup(config_of(config))

        @_guard
        def restore(self, config: str) -> RestoreSummary:
            return adapter.restore(config_of(config))

        @_guard
        def verify(self, config: str) -> VerifyReport:
            return adapter.verify(config_of(config))

    class Configuration:
        @_guard
        def check(self, config: str, drill_set: str | None) -> Footprint:
            parsed = config_of(config)
            drill = None if drill_set is None else _parse_json(drill_set, "the drill's set")
            return adapter.check(parsed, drill)

    return WitWorld, Configuration

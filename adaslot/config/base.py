"""Settings: each setting is declared once, as a dataclass field made by `setting(...)`.

The field carries the name, default, help text and valid range. The CLI (adaslot.cli) turns every field into
the flag `--field-name`; `validate()` checks ranges and choices with one-line errors naming that flag;
`to_dict()` / `from_dict()` give the JSON saved beside runs and checkpoints; `parse_value()` turns a string
(`--model KEY=VALUE`, sweep grids) into a field's type. A field whose type is itself a `Settings` (e.g.
`data: DataSpec`) contributes its fields as flags of their own, without a prefix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection, Iterator, Sequence
from typing import Any, TypeVar

from adaslot.errors import AdaslotError

S = TypeVar("S", bound="Settings")
# What a setting means when its declaration does not say (see `setting`)
PROPERTY_DEFAULTS: dict[str, Any] = {"resumable": False, "input": False, "warmstart_free": False,
                                     "axis": True, "method": None, "alias": None, "per_variant": False}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, min: float | None = None,
            max: float | None = None, above: float | None = None, choices: Sequence[Any] | None = None,
            flag: str | None = None, argument: bool = False, required: bool = False, cli: bool = True,
            shortcuts: dict[str, Any] | None = None, parser: Any = None, text: Any = None,
            omit: Sequence[str] = (),
            flags: Sequence[str] | None = None, resumable: bool = False, input: bool = False,
            warmstart_free: bool = False, axis: bool | str = True, method: str | None = None,
            alias: str | None = None, per_variant: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its CLI/validation metadata.

    min / max: inclusive bounds; above: exclusive lower bound; choices: allowed values; flag: the flag name
    when it is not the field name; argument: a positional CLI argument; required: the CLI needs it;
    cli=False: library-only; shortcuts: {"long": "long"} adds a flag `--long` meaning `--FIELD long`;
    parser: the flag is repeatable (`--model a=1 --model b=2`) and parser(list of strings) gives the value;
    text: its inverse (value -> those strings) where KEY=VALUE per item is not it (`to_flags`).
    omit (a field whose type is a Settings): its fields of these names are not flags of the outer config,
    which declares its own of the same name and fills them in per use (e.g. the sweep's `--out` is the sweep
    folder; each run's `out` is set per variant); such a nested value is a template, checked by the outer
    config's `check()` once filled in, not by `validate()`. flags (a field whose type is a Settings): only
    its top-level fields of these names are flags of the outer config (e.g. the demo's --selector sets its
    nested train config's selector); None: every field but `omit`.

    What a setting means to the rest of adaslot is said here too, never in a list elsewhere (`names_where`
    reads these back):
    resumable: a rerun of a run folder may change it (it does not change the math: resume refuses every other
    change); input: it changes the input batches (sweep variants that agree on every input setting share one
    loader); warmstart_free: a stage-2 run may differ in it from the stage-1 checkpoint it warm-starts from;
    axis: True (a sweep grid may vary it and the results show it as an axis), False (a grid may vary it,
    but it is bookkeeping or follows from another setting, so the results do not show it) or a string (not
    a grid key: what to use instead); method (a model setting): which part of the inference method it is
    (docs/adaptive.md): "keep" (the keep rule of stage 2), "merge" (slot merging) — both a command may
    override — or "trained" (recorded with the method, fixed by training); alias: the ModelConfig field
    this field of another config sets (`config.model.model_alias` declares it); per_variant (a train
    setting): `adaslot sweep` sets it for each variant, so it is not a flag of the sweep's base run.
    """
    meta = {"help": help, "min": min, "max": max, "above": above,
            "choices": tuple(choices) if choices else None, "flag": flag, "argument": argument,
            "required": required, "cli": cli, "shortcuts": shortcuts or {}, "parser": parser, "text": text,
            "omit": tuple(omit), "flags": None if flags is None else tuple(flags), "resumable": resumable,
            "input": input, "warmstart_free": warmstart_free, "axis": axis, "method": method, "alias": alias,
            "per_variant": per_variant}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def names_where(cls: type, prop: str, test: Any = True) -> frozenset[str]:
    """Names of the fields of `cls` whose declared property `prop` (see `setting`) is `test` (or, for a
    callable `test`, satisfies it); the fields of nested settings count under their own names."""
    hints = field_types(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        value = f.metadata.get(prop, PROPERTY_DEFAULTS[prop])
        if test(value) if callable(test) else value == test:
            names.add(f.name)
        if is_settings(hints[f.name]):
            names |= names_where(base_type(hints[f.name])[0], prop, test)
    return frozenset(names)


def flag_of(f: dataclasses.Field[Any], prefix: str = "--") -> str:
    """`--batch-size` for the field `batch_size` (or its declared flag name); with another prefix (e.g.
    "--model ") the field name is kept as written: `--model slot_dim`."""
    name = f.metadata.get("flag") or f.name
    return prefix + name.replace("_", "-") if prefix == "--" else prefix + name


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (the modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(X, optional) for `X | None` / `Optional[X]`; (annotation, False) otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def is_settings(annotation: Any) -> bool:
    t, _ = base_type(annotation)
    return isinstance(t, type) and issubclass(t, Settings)


def parse_value(cls: type, name: str, text: str) -> Any:
    """A string -> the type of field `name` of `cls` (int, float, bool, str, tuple of ints, or None).

    Tuples of ints accept "128x128" or "128,128"; booleans true/false/1/0/yes/no; "none" gives None for an
    optional field. Raises AdaslotError naming the field on a value of the wrong kind.
    """
    t, optional = base_type(field_types(cls)[name])
    if optional and text.strip().lower() == "none":
        return None
    try:
        if typing.get_origin(t) is tuple:
            parts = text.replace("x", ",").split(",")
            return tuple(int(v) for v in parts if v.strip())
        if t is bool:
            low = text.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return low in ("1", "true", "yes")
        if t is int:
            return int(text)
        if t is float:
            return float(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(t, "integers like 128x128")
        raise AdaslotError(f"{name} expects {kind}, got {text!r}") from None
    return text


class Settings:
    """Base of every config dataclass: validation from field metadata, JSON round trip."""

    FLAG_PREFIX = "--"  # how error messages name a field: `--batch-size`, or e.g. `--model slot_dim`

    def check(self) -> None:
        """Cross-field rules of a config (one-line AdaslotError); subclasses override."""

    def validate(self: S) -> S:
        """Check every field's range / choices (then `check()`), nested settings included; returns self."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # a Settings subclass is a dataclass
            value = getattr(self, f.name)
            if isinstance(value, Settings):
                if not f.metadata.get("omit"):
                    value.validate()
                continue
            _check_field(f, value, self.FLAG_PREFIX)
        self.check()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]  # a Settings subclass is a dataclass

    @classmethod
    def from_dict(cls: type[S], d: dict[str, Any], strict: bool = False) -> S:
        """Build from `to_dict()` output; unknown keys raise when `strict`, else they are ignored (a run made
        by an older or newer adaslot). Missing keys take their defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # a Settings subclass is a dataclass
        unknown = sorted(set(d) - set(fields))
        if strict and unknown:
            raise AdaslotError(f"unknown {cls.__name__} keys {unknown}")
        hints = field_types(cls)
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            if name not in fields:
                continue
            t, _ = base_type(hints[name])
            if is_settings(t) and isinstance(value, dict):
                value = t.from_dict(value, strict=strict)
            elif typing.get_origin(t) is tuple and isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def cli_base(cls: type[S], given: dict[str, Any]) -> S:
        """The config CLI values are applied to (the defaults; a config with profiles picks its profile)."""
        return cls()

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]  # a Settings subclass is a dataclass


def _check_field(f: dataclasses.Field[Any], value: Any, prefix: str) -> None:
    m = f.metadata
    if value is None or not m:
        return
    flag = flag_of(f, prefix)
    if m.get("choices") and value not in m["choices"]:
        raise AdaslotError(f"{flag} must be one of {', '.join(map(str, m['choices']))}, got {value!r}")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and math.isnan(v):
            raise AdaslotError(f"{flag} must be a number, got nan")
        if m.get("min") is not None and v < m["min"]:
            raise AdaslotError(f"{flag} must be >= {m['min']}, got {value}")
        if m.get("above") is not None and not v > m["above"]:
            raise AdaslotError(f"{flag} must be > {m['above']}, got {value}")
        if m.get("max") is not None and v > m["max"]:
            raise AdaslotError(f"{flag} must be <= {m['max']}, got {value}")


def _plain(value: Any) -> Any:
    """JSON-plain: nested settings -> dicts, tuples -> lists (also inside dicts)."""
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def cli_fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Any, tuple[str, ...]]]:
    """(field, resolved type, path) of every CLI setting of `cls`, nested settings flattened; path is the
    chain of nested field names leading to it (empty for top-level fields)."""
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        if is_settings(hints[f.name]):
            inner = base_type(hints[f.name])[0]
            for g, t, path in cli_fields(inner):
                if is_nested_flag(f, g.name, path):
                    yield g, t, (f.name, *path)
        else:
            yield f, hints[f.name], ()


def is_nested_flag(f: dataclasses.Field[Any], name: str, path: tuple[str, ...]) -> bool:
    """Whether the setting `name` at `path` inside the nested settings field `f` is a flag of the outer
    config (`setting`'s omit / flags)."""
    only = f.metadata.get("flags")
    if only is not None:
        return path == () and name in only
    return bool(path) or name not in f.metadata.get("omit", ())


def from_flags(cls: type[S], given: dict[str, Any], base: S | None = None) -> S:
    """A config from CLI values: `given` maps flat field names to values (None = not given, keep the default).

    Nested settings start from `base`'s (or the class default's) nested value, so a command-specific default
    (e.g. eval's split "val") stays unless the flag is given."""
    obj = base if base is not None else cls.cli_base(given)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # a Settings subclass is a dataclass
        value = getattr(obj, f.name)
        if isinstance(value, Settings):
            names = {g.name for g, _t, path in cli_fields(type(value)) if is_nested_flag(f, g.name, path)}
            inner_given = {n: given[n] for n in names if given.get(n) is not None}
            if inner_given:
                changes[f.name] = from_flags(type(value), inner_given, value)
        elif given.get(f.name) is not None:
            changes[f.name] = given[f.name]
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]  # a Settings subclass is a dataclass


def value_text(value: Any) -> str:
    """A setting's value as a flag takes it (parse_value reads it back): 128x128, 0.002, true, none."""
    if isinstance(value, tuple | list):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def to_flags(cfg: Settings, only: Collection[str] | None = None) -> list[str]:
    """The command-line arguments that give `cfg` (the inverse of the CLI): positional arguments first, then
    `--flag value` (or its shortcut: `--long`) for every setting that differs from its default (required ones
    always), in field order; `only`: just the settings of these names."""
    default = type(cfg)()
    args: list[str] = []
    flags: list[str] = []
    for f, _t, path in cli_fields(type(cfg)):
        if only is not None and f.name not in only:
            continue
        value, dflt = value_at(cfg, path, f.name), value_at(default, path, f.name)
        if value == dflt and not f.metadata.get("required"):
            continue
        flag = flag_of(f)
        short = [k for k, v in f.metadata.get("shortcuts", {}).items() if v == value]
        if short:
            flags.append(f"--{short[0]}")
        elif f.metadata.get("argument"):
            args.append(value_text(value))
        elif f.metadata.get("text"):  # a repeatable flag with its own form (e.g. --grid, --seeds)
            flags += [a for item in f.metadata["text"](value) for a in (flag, item)]
        elif isinstance(value, dict):  # a repeatable KEY=VALUE flag (e.g. --model)
            flags += [a for k, v in value.items() for a in (flag, f"{k}={value_text(v)}")]
        elif isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            flags += [flag, value_text(value)]
    return args + flags


def value_at(obj: Any, path: tuple[str, ...], name: str) -> Any:
    """The value of setting `name` reached through the nested settings `path` (as `cli_fields` gives them)."""
    for p in path:
        obj = getattr(obj, p)
    return getattr(obj, name)

"""Loading configs: strict YAML with `base:` inheritance, dotted overrides, JSON round trip.

    cfg = load_config("configs/quickstart.yaml", ["model.position=rel", "train.max_steps=200"])
    cfg.model.position   # 'rel'

A config file may name another one as its `base:` (a path relative to the file); its keys
override the base's, section by section, and bases chain (`paper/gpt_rot.yaml` -> `base.yaml`).
Then the `--set` overrides apply, then everything is checked. Loading is strict, so a typo fails
in under a second, before any sampling or training: unknown keys raise ConfigError with a
"did you mean"; values must have the field's type (an int is accepted for a float, nothing else
is converted; NaN and infinities are refused); ranges and names: `cfglab.config.validate`.
Override values are read as YAML (`200` -> int, `true` -> bool, `[1, 3]` -> list, `null`).

Every YAML text (a config, an experiment file, a --set value) is read by `safe_yaml`, which
first checks on the parser's events, before anything is built, that it expands to at most
MAX_YAML_NODES values nested at most MAX_YAML_DEPTH deep (aliases counted at every use) and holds
no NUL byte: a "billion laughs" alias bomb or a 5,000-deep nesting is one line of error.

What is validated where (nothing here imports torch): here, every key, type and range, the stage
names, the objective and the grammar (loaded through `cfglab.grammar.load`); at the start of
training, before any sampling: the position variant (by building the model), the batch against
the world size, and the checkpoint on resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from cfglab.config.schema import ExperimentConfig
from cfglab.config.validate import validate
from cfglab.errors import CfglabError, ConfigError, did_you_mean

PATH_KEYS = (("grammar", "name"), ("data", "dataset"))  # file paths, relative to their config
# What one YAML text may expand to. A config is ~100 values 5 deep; the bounds stop a few lines
# of aliases that expand to billions of values (any walk of the result would expand them) and
# nesting that would overflow PyYAML's recursive composer, before anything is built.
MAX_YAML_NODES = 100_000  # values, aliases counted at every use
MAX_YAML_DEPTH = 100  # mappings and lists inside one another, aliases expanded
MAX_YAML_BYTES = 10 * 2**20  # a config file's size
_EVENTS_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when installed


# ---- loading ---------------------------------------------------------------------------------
def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config and its `base:` chain (None: the defaults), apply dotted `key=value`
    overrides, validate.

    Relative file paths (grammar.name, data.dataset) are resolved against the folder of the
    config file that sets them, then the working directory, and stored absolute, so the run
    directory's config.json is portable.
    """
    data: dict[str, Any] = {} if path is None else _read_chain(Path(path), [])
    for item in overrides or []:
        apply_override(data, item)
    cfg = config_from_dict(data)
    _resolve_grammar_path(cfg, Path(".") if path is None else Path(path).parent)
    return cfg


def read_yaml(p: Path, what: str = "config", example: str = "configs/quickstart.yaml") -> dict:
    """A YAML file whose top level is a mapping; ConfigError naming the file (and the line of a
    syntax error) otherwise."""
    if not p.is_file():
        kind = "a folder" if p.is_dir() else "no such file"
        raise ConfigError(f"{what} {p}: {kind}; give a YAML file such as {example}")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{what} {p}: {p.stat().st_size:,} bytes, over the {MAX_YAML_BYTES:,} a config may "
            f"have; give a YAML file such as {example}"
        )
    try:
        loaded = safe_yaml(p.read_text(encoding="utf-8"), str(p))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys (see {example})")
    return loaded


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load(text), once `_check_expansion` has passed (ConfigError naming `where`);
    a syntax error is PyYAML's YAMLError, as safe_load's."""
    yaml_expansion(text, where)
    return yaml.safe_load(text)


def yaml_expansion(text: str, where: str) -> tuple[int, int]:
    """(values, nesting) that `text` expands to, every alias counted where it is used (a merge
    key `<<: *a` as a mapping of its own: an upper bound); ConfigError beyond MAX_YAML_NODES or
    MAX_YAML_DEPTH, for an alias inside its own anchor, or a NUL byte. One pass over the
    parser's events, stopped at the first excess; each anchor's expansion is counted once and
    looked up at each use (memoised), so a bomb costs no more to count than to read."""
    done: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) of its expansion
    # open mappings and lists: [anchor, height of the tallest child, values before it opened]
    stack: list[list] = []
    total = deepest_seen = 0
    for event in yaml.parse(text, Loader=_EVENTS_LOADER):
        line = f"{where}:{event.start_mark.line + 1}" if event.start_mark else where
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 0, total])
            nodes, depth = 1, len(stack)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, deepest, start = stack.pop()
            if anchor is not None:  # values added since it opened, itself included
                done[anchor] = (total - start, deepest + 1)
            if stack:
                stack[-1][1] = max(stack[-1][1], deepest + 1)
            continue
        elif isinstance(event, yaml.ScalarEvent):
            if "\x00" in event.value:
                raise ConfigError(f"{line}: a value holds a NUL byte; remove it")
            if event.anchor is not None:
                done[event.anchor] = (1, 0)
            nodes, depth = 1, len(stack)
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise ConfigError(f"{line}: alias *{event.anchor} inside its own anchor")
            if event.anchor not in done:
                continue  # an undefined alias: safe_load names it
            nodes, inner = done[event.anchor]
            depth = len(stack) + inner
            if stack:
                stack[-1][1] = max(stack[-1][1], inner)
        else:
            continue
        total += nodes
        deepest_seen = max(deepest_seen, depth)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: expands to more than {MAX_YAML_NODES:,} values (aliases counted at "
                "every use); a config is far smaller: remove the aliases that multiply it"
            )
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(
                f"{line}: nested more than {MAX_YAML_DEPTH} deep (aliases expanded); a config is "
                "far flatter: remove the nesting"
            )
    return total, deepest_seen


def _read_chain(p: Path, chain: list[Path]) -> dict[str, Any]:
    """The config at p merged over its base chain; chain = the files that led here."""
    here = p.resolve()
    if here in chain:
        names = " -> ".join(str(c) for c in [*chain, here])
        raise ConfigError(f"config base cycle: {names}; remove one of these base: keys")
    data = read_yaml(p)
    _absolute_paths(data, p.parent)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: base: must be the path of another config file, got {base!r}")
    base_path = p.parent / base
    if not base_path.is_file():
        raise ConfigError(
            f"{p}: base: {base} not found (looked for {base_path}); give a path relative to {p}"
        )
    return _merge(_read_chain(base_path, [*chain, here]), data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """top's keys over base's, mappings merged key by key (a section is not replaced whole)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _absolute_paths(data: dict[str, Any], folder: Path) -> None:
    """Make PATH_KEYS that name an existing file or folder relative to `folder` absolute."""
    from cfglab.grammar import BUILTIN_GRAMMARS

    for section, key in PATH_KEYS:
        node = data.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value = node[key]
        if value in BUILTIN_GRAMMARS or Path(value).is_absolute():
            continue
        try:
            beside = (folder / value).exists()
        except OSError:  # a name the file system refuses: validation names it
            continue
        if beside:
            node[key] = str((folder / value).resolve())


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from plain data (YAML or config.json)."""
    cfg = _build(ExperimentConfig, data, "")
    validate(cfg)
    return cfg


def config_json(cfg: ExperimentConfig) -> str:
    """The resolved config as JSON text (enough to rebuild the run): a run's config.json, which
    cfglab.rundir writes."""
    return json.dumps(cfg.to_dict(), indent=2) + "\n"


def config_from_json(text: str, path: str | Path) -> ExperimentConfig:
    """The config of a config.json's text (`path`: where it was read, named in errors)."""
    p = Path(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: corrupt config.json ({exc}); re-create the run") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: corrupt config.json (not a mapping); re-create the run")
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(
            f"{p}: {exc} (written by another version of cfglab? re-create the run)"
        ) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. model.position=rel")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: bad key {key!r}; write e.g. train.max_steps=200")
    # the type check in _build validates; str fields take the raw text (see _RawOverride)
    try:
        value = safe_yaml(raw, f"override {key}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = nxt
    if isinstance(value, dict):
        # a section given as a mapping is merged key by key, as base: chains merge: `set:
        # {eval: {n_samples: 5}}` keeps the other eval settings, and later key.sub overrides
        # still find a section
        old = node.get(parts[-1])
        node[parts[-1]] = _merge(old, value) if isinstance(old, dict) else value
        return
    node[parts[-1]] = _RawOverride(raw, value)


class _RawOverride:
    """An override value with its raw text, so a str field gets '1e-3' rather than 0.001."""

    def __init__(self, raw: str, value: Any) -> None:
        self.raw, self.value = raw, value


def _build(cls: type, data: Any, where: str):
    label = where.rstrip(".") or "config"
    if isinstance(data, _RawOverride):
        data = data.value
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of keys, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key {where}{key}{did_you_mean(str(key), fields)}; "
                f"valid keys in {label}: {', '.join(fields)}"
            )
        hint = hints[key]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nested = [o for o in options if dataclasses.is_dataclass(o)]
        if nested and type(None) in options and _plain(value) is None:
            kwargs[key] = None  # an optional section left out (e.g. grammar.implicit: null)
        elif nested:
            kwargs[key] = _build(nested[0], value if value is not None else {}, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{where}{key}")
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, _RawOverride) else value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _hint_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_hint_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list of {_hint_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else hint.__name__


def _check_type(value: Any, hint: Any, key: str) -> Any:
    raw = None
    if isinstance(value, _RawOverride):
        raw, value = value.raw, value.value
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for opt in options:
        ok, out = _matches(value, opt, raw)
        if ok:
            return out
    finite = "" if not isinstance(value, float) or math.isfinite(value) else " (finite)"
    raise ConfigError(
        f"{key}: expected {_hint_name(hint)}{finite}, got {_type_name(value)} "
        f"{value!r}; fix the value in the config or the --set override"
    )


def _matches(value: Any, opt: Any, raw: str | None) -> tuple[bool, Any]:
    if opt is type(None):
        return value is None, None
    if opt is str:
        if isinstance(value, str):
            return True, value
        if raw is not None and value is not None and not isinstance(value, (list, dict)):
            return True, raw.strip()  # `--set name=123` means the string "123"
        return False, None
    if opt is bool:
        return isinstance(value, bool), value
    if opt is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if opt is float:
        if isinstance(value, str):
            try:  # PyYAML reads 3e-4 (no dot) as a string; accept it as the float it means
                value = float(value)
            except ValueError:
                return False, None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)  # NaN and infinities are no setting's meaning
        return ok, float(value) if ok else None
    if typing.get_origin(opt) is list:
        if not isinstance(value, list):
            return False, None
        (inner,) = typing.get_args(opt)
        outs = [_matches(v, inner, None) for v in value]
        return all(ok for ok, _ in outs), [o for _, o in outs]
    return False, None


def _resolve_grammar_path(cfg: ExperimentConfig, folder: Path) -> None:
    """Check the grammar now (before any work) and make a relative file path absolute: relative
    to the config file's folder first (a --set override of grammar.name too), then to the
    working directory."""
    from cfglab.grammar import BUILTIN_GRAMMARS

    name = cfg.grammar.name
    if name not in BUILTIN_GRAMMARS:
        from cfglab.languages import LANGUAGES, is_language_spec

        for candidate in (folder / name, Path(name)):
            if candidate.is_file():
                cfg.grammar.name = str(candidate.resolve())
                break
        else:
            if is_language_spec(name) and cfg.grammar.implicit is not None:
                raise ConfigError(
                    "grammar.implicit: an implicit version needs a grammar's terminal rules, and "
                    f"{name!r} is a language beyond context-free; drop grammar.implicit"
                )
            if not is_language_spec(name):  # a language's spec ('copy alphabet=3') stays as is
                raise ConfigError(
                    f"grammar.name: unknown grammar {name!r}"
                    f"{did_you_mean(name, BUILTIN_GRAMMARS)}; give a built-in name "
                    f"({', '.join(BUILTIN_GRAMMARS)}), the path of a grammar file or a language "
                    f"({', '.join(LANGUAGES)}, e.g. 'copy alphabet=3')"
                )
    try:
        cfg.grammar.load()
    except CfglabError as exc:
        raise ConfigError(f"grammar.name: {exc}") from None

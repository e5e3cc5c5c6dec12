"""YAML loading with `FILE:LINE: field: message` errors.

Every error in a file is reported at once: YAML syntax errors with their line, and pydantic validation
errors mapped back to the line of the offending key.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from monitor.core.errors import ConfigError, ConfigIssue

M = TypeVar("M", bound=BaseModel)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")






class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases: a config file has no need of them, and they can bomb memory."""


def expand_env(value: Any, missing: list[str]) -> Any:
    """Replace ${NAME} in every string by the environment variable NAME (missing ones collected);
    ${NAME:-DEFAULT} gives DEFAULT when NAME is unset or empty."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if os.environ.get(name):
                return os.environ[name]
            if default is not None:
                return default
            if name not in os.environ:
                missing.append(name)
            return ""

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, missing) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, missing) for k, v in value.items()}
    return value


def env_lines(text: str, names: list[str]) -> list[tuple[str, int]]:
    """Each name once, in order, with the 1-based line of its first `${NAME}` reference in `text`."""
    first: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#"):
            continue
        for m in _ENV.finditer(line):
            first.setdefault(m.group(1), n)
    return [(name, first.get(name, 1)) for name in dict.fromkeys(names)]


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int:
    """The 1-based line of the node at `loc` (the deepest existing ancestor when it is missing)."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    current: yaml.Node = node
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(current, yaml.MappingNode):
            for key, val in current.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    nxt = val
                    line = key.start_mark.line + 1
                    break
        elif (isinstance(current, yaml.SequenceNode) and isinstance(part, int)
              and 0 <= part < len(current.value)):
            nxt = current.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        current = nxt
    return line


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


def _compose_node_no_alias(self: yaml.SafeLoader, parent: Any, index: Any) -> Any:
    if self.check_event(yaml.AliasEvent):
        event = self.get_event()  # type: ignore[no-untyped-call]
        raise yaml.composer.ComposerError(
            None, None, f"alias *{event.anchor} is not allowed in configuration", event.start_mark
        )
    return yaml.composer.Composer.compose_node(self, parent, index)


_Loader.compose_node = _compose_node_no_alias  # type: ignore[method-assign,assignment]


class Document:
    """A parsed YAML (or JSON) file. The node tree that maps errors to lines is composed only when an
    error needs a line, so a large, valid file costs one fast parse."""

    def __init__(self, file: str, text: str, data: Any, node: yaml.Node | None = None) -> None:
        self.file = file
        self.text = text
        self.data = data
        self._node = node
        self._composed = node is not None

    def node(self) -> yaml.Node | None:
        if not self._composed:
            self._composed = True
            try:
                loader = _Loader(self.text)
                try:
                    self._node = loader.get_single_node()
                finally:
                    loader.dispose()
            except yaml.YAMLError:
                self._node = None
        return self._node

    def line(self, loc: tuple[int | str, ...]) -> int:
        return _line_of(self.node(), loc)


_FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def parse_document(file: str, text: str) -> Document:
    """Parse YAML (JSON is accepted as YAML; a `.json` file is read as JSON) or raise ConfigError."""
    if file.endswith(".json"):
        try:
            return Document(file, text, json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError([ConfigIssue(file, exc.lineno, "(json)", exc.msg)]) from None
        except RecursionError:
            raise ConfigError([ConfigIssue(file, 1, "(json)", "nested too deeply")]) from None
    try:
        if _FAST_LOADER is not None and "&" not in text:
            # No anchor can be defined, so no alias can appear: the C parser is safe and ~4x faster.
            return Document(file, text, yaml.load(text, Loader=_FAST_LOADER))
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
        return Document(file, text, data, node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([ConfigIssue(file, line, "(yaml)", str(exc.problem or exc))]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, "(yaml)", str(exc))]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(file, 1, "(yaml)", "nested too deeply")]) from None


def load_document(path: Path) -> Document:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, 1, "(file)", exc.strerror or str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(name, 1, "(file)", f"not UTF-8 text: {exc.reason}")]) from None
    return parse_document(name, text)


def validate(model: type[M], doc: Document) -> M:
    """Validate a document against a pydantic model, mapping every error to FILE:LINE: field: message."""
    missing: list[str] = []
    expanded = expand_env(doc.data if doc.data is not None else {}, missing)
    issues = [ConfigIssue(doc.file, line, "(env)", f"environment variable {name} is not set")
              for name, line in env_lines(doc.text, missing)]
    try:
        result = model.model_validate(expanded)
    except RecursionError:
        raise ConfigError([ConfigIssue(doc.file, 1, "(top)", "nested too deeply")]) from None
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, int | str))
            issues.append(ConfigIssue(doc.file, doc.line(loc), field_path(loc), err["msg"]))
        raise ConfigError(issues) from None
    if issues:
        raise ConfigError(issues)
    return result


def load_model(model: type[M], path: Path) -> M:
    return validate(model, load_document(path))

"""Limits for the YAML files tilpheno loads (gating strategies, release specs, studies,
vocabularies, panel files).

A YAML *alias bomb* (a few hundred bytes of anchors that reference anchors) is a small file whose
expanded value has billions of elements: PyYAML builds it with shared objects, but rendering it
(``str(value)``) or walking it takes unbounded memory and time. So, for every file:

* its size is at most ``MAX_YAML_BYTES`` (1 MiB), read from a regular file only;
* the document's *expanded* size (every node counted once per alias that reaches it) is at most
  ``MAX_EXPANDED_NODES`` (100,000) before any Python object is built (:func:`check_expansion`);
* values that are rendered as text (names, descriptions, units) must be scalars (text or number,
  not a list or mapping) of at most ``MAX_TEXT_CHARS`` (10,000) characters (:func:`scalar_text`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from tilpheno.io.files import path_problem

MAX_YAML_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000
MAX_TEXT_CHARS = 10_000


class YAMLLimitError(ValueError):
    """A YAML file breaks a limit; the message says which."""


def read_yaml_bytes(path: str | Path, limit: int = MAX_YAML_BYTES) -> bytes:
    """The bytes of a YAML file: a regular file of at most ``limit`` bytes (``OSError`` /
    :class:`YAMLLimitError` otherwise)."""
    from tilpheno.io.files import open_regular

    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise YAMLLimitError(f"larger than {limit} bytes; a tilpheno YAML file (strategy, study, release spec, panel) is a few kB")
    return data


def check_expansion(node: yaml.Node | None, limit: int = MAX_EXPANDED_NODES) -> int:
    """The number of nodes of the document with every alias expanded; :class:`YAMLLimitError`
    above ``limit``. Linear in the size of the file (each distinct node is sized once)."""
    if node is None:
        return 0
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if key in sizes:
            continue
        if isinstance(current, yaml.ScalarNode):
            sizes[key] = 1
            continue
        kids = _children(current)
        if not children_done:
            sizes_missing = [k for k in kids if id(k) not in sizes]
            if sizes_missing:
                stack.append((current, True))
                stack.extend((k, False) for k in sizes_missing)
                continue
        total = 1 + sum(sizes.get(id(k), 1) for k in kids)
        if total > limit:
            raise YAMLLimitError(f"expands to more than {limit} values (nested aliases); refused")
        sizes[key] = total
    return sizes[id(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_duplicate_keys(node: yaml.Node | None) -> None:
    """``yaml.MarkedYAMLError`` at the second of two equal keys in one mapping (PyYAML would keep
    the last silently). Each distinct node is visited once (aliases share theirs)."""
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: set = set()
            for key_node, _ in current.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in keys:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value!r}",
                                                                key_node.start_mark)
                    keys.add(key_node.value)
        stack.extend(_children(current))


def load_document(loader: yaml.SafeLoader):
    """``loader.get_single_data()`` with the expansion and duplicate keys checked on the composed
    nodes first."""
    node = loader.get_single_node()
    check_expansion(node)
    check_duplicate_keys(node)
    return loader.construct_document(node) if node is not None else None


_KEY_STEP = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def key_line(raw: bytes, where: str, value: object = None) -> int:
    """The 1-based line of the key ``where`` (``qc.expected.cd3_pct``, ``criteria[2].column``) in the
    YAML bytes ``raw``, or of the deepest part of it that exists; with ``value``, of the list item or
    mapping key equal to it found there. 0 when the file does not parse or the first key is not there. For
    error messages only (the file is composed again)."""
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError):
        return 0
    line = 0
    for index, key in _KEY_STEP.findall(where):
        step = None
        if key and isinstance(node, yaml.MappingNode):
            step = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            step = (node.value[int(index)],) * 2
        if step is None:
            return line
        line, node = step[0].start_mark.line + 1, step[1]
    if value is not None and isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        items = node.value if isinstance(node, yaml.SequenceNode) else [k for k, _ in node.value]
        line = next((item.start_mark.line + 1 for item in items
                     if isinstance(item, yaml.ScalarNode) and item.value == str(value)), line)
    return line


def with_line(message: str, path: str | Path, raw: bytes, value: object = None) -> str:
    """``"<path>: <where>: <problem>"`` as ``"<path>:<line>: <where>: <problem>"`` (the form the
    strategy files' errors have) when ``<where>`` is found in ``raw`` (:func:`key_line`); else as is."""
    prefix = f"{path}: "
    if not message.startswith(prefix) or ": " not in message[len(prefix):]:
        return message
    rest = message[len(prefix):]
    line = key_line(raw, rest.split(": ", 1)[0], value)
    return f"{path}:{line}: {rest}" if line else message


# libyaml's parser, when PyYAML was built with it: composes a file about ten times faster than the
# pure-Python one (a study's and its strategies' YAML: 30 -> 3 ms of every run's start)
FAST_LOADER: type | None = getattr(yaml, "CSafeLoader", None)


def load_text(text: str, loader: type = yaml.SafeLoader, fast: type | None = FAST_LOADER, name: str | None = None):
    """The document of YAML ``text`` (:func:`load_document`: limits and duplicate keys checked),
    read by the ``fast`` loader (libyaml's, with ``loader``'s constructors) when there is one; if
    that fails, by the pure-Python ``loader`` again, whose error (message, line) is the one raised,
    so every message is the same with or without libyaml. ``name``: the file's name in marks."""
    for cls in ((fast, loader) if fast is not None else (loader,)):
        parser = cls(text)
        if name is not None:
            parser.name = name
        try:
            return load_document(parser)
        except (yaml.YAMLError, YAMLLimitError):
            if cls is loader:
                raise
        finally:
            parser.dispose()
    raise AssertionError("unreachable: the pure-Python loader returns or raises")


def safe_load(text: str):
    """``yaml.safe_load`` with the expansion limit and duplicate keys refused (:func:`load_text`)."""
    return load_text(text)


def load_file(path: str | Path) -> tuple[bytes, object]:
    """The bytes of a YAML file and its document, with every limit above (size, regular file,
    expansion). Raises ``OSError``, :class:`YAMLLimitError`, ``UnicodeDecodeError`` or
    ``yaml.YAMLError``; callers turn them into their one-line errors."""
    raw = read_yaml_bytes(path)
    return raw, safe_load(raw.decode("utf-8"))


def load_config(path: Path, what: str, expected: str, error: type[Exception],
                allowed: Iterable[str] | None = None, *, empty_ok: bool = False) -> tuple[bytes, Mapping]:
    """A YAML configuration file that must hold one mapping: its bytes (for the SHA-256) and the
    mapping. Every failure is raised as ``error`` with one line naming ``path``: unreadable
    ("cannot read <what>"), over a limit, not YAML, not a mapping ("expected a mapping with
    <expected>"), or, when ``allowed`` is given, top-level keys outside it. An empty file is an
    empty mapping when ``empty_ok``, else "not a mapping"."""
    try:
        raw, doc = load_file(path)
    except FileNotFoundError:
        raise error(path_problem(path)) from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except YAMLLimitError as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: not a valid YAML file ({exc.problem or exc.context or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not a valid YAML file ({str(exc).splitlines()[0]})") from None
    if doc is None and empty_ok:
        doc = {}
    if not isinstance(doc, Mapping):
        raise error(f"{path}: expected a mapping with {expected}")
    if allowed is not None:
        unknown = sorted(set(doc) - set(allowed))
        if unknown:
            raise error(with_line(f"{path}: {unknown[0]}: unknown key(s) {unknown}; allowed: {sorted(allowed)}",
                                  path, raw))
    return raw, doc


def scalar_text(value, what: str, *, default: str = "", limit: int = MAX_TEXT_CHARS) -> str:
    """``value`` as text when it is a scalar (str, int, float, bool, None -> ``default``) of at most
    ``limit`` characters; :class:`YAMLLimitError` naming ``what`` otherwise."""
    if value is None:
        return default
    if isinstance(value, (list, tuple, dict, set)):
        raise YAMLLimitError(f"{what}: must be text, not a {'list' if isinstance(value, (list, tuple)) else 'mapping'}")
    if not isinstance(value, (str, int, float, bool)):
        raise YAMLLimitError(f"{what}: must be text, not {type(value).__name__}")
    text = str(value)
    if len(text) > limit:
        raise YAMLLimitError(f"{what}: {len(text)} characters, more than {limit}")
    return text

"""Read a user's YAML settings file (release config, card metadata, GPTQ preset) with one-line errors.

Everything YAML here goes through `load_yaml_text`: PyYAML's safe loader plus three refusals a
plain `safe_load` lacks: duplicate keys (the later `license:` silently won), aliases that refer to
themselves (a RecursionError in whatever walks the data next), and alias expansion beyond a small
bound (a "billion laughs" file that composes instantly but hangs every consumer).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import yaml

from hubtool.errors import HubtoolError, InputError

MAX_ALIASES = 100  # settings files and card headers rarely need any
MAX_EXPANDED_NODES = 100_000  # the document's size with every alias expanded


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class BoundedSafeLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys, recursive aliases and alias bombs."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._open: set[str] = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if event.anchor in self._open:
                raise _Refused(f"alias *{event.anchor} refers to the node that contains it", event.start_mark)
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name); write the values out", event.start_mark)
            return super().compose_node(parent, index)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None and isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self._open.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self._open.discard(anchor)
        return super().compose_node(parent, index)

    def compose_document(self) -> Any:
        node = super().compose_document()
        if self._aliases and _expanded_size(node) > MAX_EXPANDED_NODES:
            raise _Refused(f"aliases expand to more than {MAX_EXPANDED_NODES} values; write the values out", node.start_mark)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        _refuse_duplicates(node)
        return super().construct_mapping(node, deep=deep)


def _refuse_duplicates(node: Any) -> None:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = key_node.value
            if key in seen and key != "<<":
                raise _Refused(f"duplicate key {key!r} (first on line {seen[key].line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark


def _expanded_size(root: Any) -> int:
    """Node count with aliases expanded, memoised per node so the count itself stays cheap."""
    memo: dict[int, int] = {}

    def size(node: Any) -> int:
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = 1  # cycles were refused while composing; this guards against surprises
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(n) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        memo[id(node)] = min(total, MAX_EXPANDED_NODES + 1)
        return memo[id(node)]

    return size(root)


def _check_graph(root: Any) -> None:
    """The composer refusals of BoundedSafeLoader, on a node graph libyaml composed: an alias is a second
    reference to a node, a recursive alias a reference to a node being walked (iterative: no recursion)."""
    seen: set[int] = set()
    aliases = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, leaving = stack.pop()
        if leaving:
            open_.discard(id(node))
            continue
        if id(node) in open_:
            raise _Refused("alias refers to the node that contains it", node.start_mark)
        if id(node) in seen:
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name); write the values out", node.start_mark)
            continue
        seen.add(id(node))
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_.add(id(node))
            stack.append((node, True))
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            stack.extend((child, False) for child in reversed(children))
    if aliases and _expanded_size(root) > MAX_EXPANDED_NODES:
        raise _Refused(f"aliases expand to more than {MAX_EXPANDED_NODES} values; write the values out", root.start_mark)


if hasattr(yaml, "CSafeLoader"):
    class FastBoundedSafeLoader(yaml.CSafeLoader):  # type: ignore[misc, valid-type]
        """BoundedSafeLoader's refusals over libyaml's parser: a large card header parses in C (the pure-Python
        parser took seconds per MB), then the node graph is checked and constructed as before."""

        def get_single_node(self) -> Any:
            node = super().get_single_node()
            if node is not None:
                _check_graph(node)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            _refuse_duplicates(node)
            return super().construct_mapping(node, deep=deep)
else:  # pragma: no cover - PyYAML without libyaml
    FastBoundedSafeLoader = BoundedSafeLoader  # type: ignore[misc, assignment]


def load_yaml_text(text: str) -> Any:
    """`yaml.safe_load` with the refusals above; raises yaml.YAMLError (with problem/problem_mark)."""
    collecting = gc.isenabled()
    gc.disable()  # a big header makes ~10 objects per value: the collector's full passes made parsing superlinear
    try:
        return yaml.load(text, Loader=FastBoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise _Refused("nesting too deep", None) from None
    finally:
        if collecting:
            gc.enable()


def yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """(1-based line or None, problem text) of a YAML error, for one-line messages."""
    mark = getattr(exc, "problem_mark", None)
    return (mark.line + 1 if mark is not None else None), (getattr(exc, "problem", None) or "syntax error")


def read_yaml_mapping(path: Path | str, *, what: str, example: str, error: type[HubtoolError] = InputError) -> dict[str, Any]:
    """The file's top-level mapping ({} for an empty file); `what` names the file kind in errors."""
    from hubtool.textfile import read_text

    path = Path(path)
    text = read_text(path, what=what, error=error)
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        where = f":{line}" if line is not None else ""
        raise error(f"{path}{where}: invalid YAML ({problem}); fix the syntax, quoting values that contain ':' or '#'") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping ({example}), got {type(data).__name__}")
    return data

"""Reading a suite file's YAML safely: ``yaml.safe_load``'s semantics within bounds.

A suite is small (the shipped ones hold under 500 values, at most 7 levels deep), but YAML
lets a few hundred bytes of aliases expand to billions of values ("billion laughs"), and a deep
nest overflows the recursive composer and every validator after it. So, before anything
constructs or validates the document:

- the file is at most ``MAX_SUITE_BYTES``;
- nesting is at most ``MAX_SUITE_DEPTH`` levels, as written (checked while composing, before
  the composer's own recursion could overflow) and once aliases are expanded;
- the document holds at most ``MAX_SUITE_NODES`` values once aliases are expanded, counted on
  the composed node graph with one size per node (an alias is the same node object), so a bomb
  is measured in time linear in the file, never expanded; an alias inside its own node (a
  cycle) is refused.

The loader also refuses a key given twice in one mapping, two ``<<`` merge keys in one mapping
and a key merged in from two mappings. YAML 1.1 accepts the last two, and a precedence rule
the reader does not see decides which value is kept (the first merged mapping wins, the later
``<<`` key wins): a suite whose value is not the one its author meant is what robench refuses.
An explicit key still overrides a merged one, as YAML defines (``{<<: *defaults, steps: 40}``),
also when the mapping holding the override is itself merged elsewhere: PyYAML flattens a
merged node in place, so the checks read each mapping as it was written (``_written``), never
as another mapping's flattening left it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from robench.errors import UserError
from robench.outdir.files import read_regular

#: the largest suite file read: the shipped suites are under 7 kB, and PyYAML's pure-Python
#: parser takes seconds per 100 kB of short values
MAX_SUITE_BYTES = 128 << 10
#: values (scalars, lists, mappings, keys included) once aliases are expanded (the shipped
#: suites hold under 500, and a file of MAX_SUITE_BYTES written out in full about 65 000)
MAX_SUITE_NODES = 100_000
#: levels of nesting, leaf values included (the shipped suites use at most 7)
MAX_SUITE_DEPTH = 50

_MERGE = "tag:yaml.org,2002:merge"


class SuiteTooLarge(Exception):
    """A bound of this module exceeded: ``where`` is the key path of the part that does."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def _children(node: Node) -> list[tuple[str, Node]]:
    """A node's children, each with the key-path step leading to it (a mapping's keys count
    as values too: a key can be a bomb as well)."""
    if isinstance(node, SequenceNode):
        return [(f"[{i}]", child) for i, child in enumerate(node.value)]
    if isinstance(node, MappingNode):
        out: list[tuple[str, Node]] = []
        for key, value in node.value:
            name = str(key.value)[:40] if isinstance(key, ScalarNode) else "?"
            out += [(f".{name}", key), (f".{name}", value)]
        return out
    return []


def _measure(root: Node) -> tuple[dict[int, int], dict[int, int]]:
    """(size, depth) of every node of the graph below ``root``, by id, after alias expansion,
    each computed once (an explicit stack: a chain of aliases is deeper than Python's
    recursion allows). Sizes and depths are clamped just above their caps."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool, str]] = [(root, False, "")]
    while stack:
        node, done, path = stack.pop()
        key = id(node)
        if done:
            children = [c for _, c in _children(node)]
            size[key] = min(MAX_SUITE_NODES + 1,
                            1 + sum(size[id(c)] for c in children))
            depth[key] = min(MAX_SUITE_DEPTH + 1,
                             1 + max((depth[id(c)] for c in children), default=0))
            on_path.discard(key)
            continue
        if key in size:
            continue
        if key in on_path:
            raise SuiteTooLarge("a YAML alias refers to a node that contains itself",
                                path.lstrip("."))
        on_path.add(key)
        stack.append((node, True, path))
        stack += [(child, False, path + step) for step, child in _children(node)
                  if id(child) not in size]
    return size, depth


def _blame(root: Node, measure: dict[int, int], cap: int) -> str:
    """The key path of the innermost node whose own measure (size or depth) still exceeds
    ``cap``: for a bomb, the key that holds it."""
    path, node = "", root
    for _ in range(MAX_SUITE_DEPTH + 1):
        over = [(step, child) for step, child in _children(node) if measure[id(child)] > cap]
        if not over:
            break
        step, node = over[0]
        path += step
    return path.lstrip(".") or "(top level)"


def check_bounds(root: Node) -> None:
    """Refuse a composed document over ``MAX_SUITE_NODES`` values or ``MAX_SUITE_DEPTH``
    levels once its aliases are expanded, or whose aliases form a cycle (``SuiteTooLarge``)."""
    size, depth = _measure(root)
    if size[id(root)] > MAX_SUITE_NODES:
        raise SuiteTooLarge(f"holds more than {MAX_SUITE_NODES} values once YAML aliases are "
                            "expanded", _blame(root, size, MAX_SUITE_NODES))
    if depth[id(root)] > MAX_SUITE_DEPTH:
        raise SuiteTooLarge(f"nested deeper than {MAX_SUITE_DEPTH} levels once YAML aliases "
                            "are expanded", _blame(root, depth, MAX_SUITE_DEPTH))


class SuiteLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` within this module's bounds, refusing repeated and ambiguous keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        #: each flattened mapping's pairs as written, by id (the node is kept alive with them)
        self._as_written: dict[int, tuple[MappingNode, list[tuple[Node, Node]]]] = {}
        self._checked: dict[int, MappingNode] = {}  # by id, the node kept alive

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # the composer recurses once per level: stop before Python's recursion limit does
        self._depth += 1
        try:
            if self._depth > MAX_SUITE_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_SUITE_DEPTH} levels",
                                    self.peek_event().start_mark)
            return cast(Node, super().compose_node(parent, index))  # an event is pending
        finally:
            self._depth -= 1

    def construct_document(self, node: Node) -> Any:
        check_bounds(node)
        return super().construct_document(node)

    def flatten_mapping(self, node: MappingNode) -> None:
        # PyYAML replaces a merged node's pairs by their flattened form, before that node's
        # own construct_mapping may have run: keep them as written for the checks
        self._as_written.setdefault(id(node), (node, list(node.value)))
        super().flatten_mapping(node)

    def _written(self, node: MappingNode) -> list[tuple[Node, Node]]:
        """A mapping's pairs as the file writes them (merge keys included)."""
        return self._as_written.get(id(node), (node, node.value))[1]

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        self._check_mapping(node)
        return super().construct_mapping(node, deep=deep)

    def _check_mapping(self, node: MappingNode) -> None:
        """Refuse a repeated key, a second ``<<`` key, or a key merged in from two mappings,
        in ``node`` or in a mapping it merges (a merged mapping is never constructed on its
        own: it is checked here); each mapping once."""
        if id(node) in self._checked:
            return
        self._checked[id(node)] = node
        seen: dict[Any, int] = {}
        merges: list[Node] = []
        for key_node, value_node in self._written(node):
            if key_node.tag == _MERGE:
                if merges:
                    raise ConstructorError(
                        None, None, f"merge key '<<' appears twice (also at line "
                        f"{merges[0].start_mark.line + 1}); merge several mappings with "
                        "<<: [*a, *b]", key_node.start_mark)
                merges.append(key_node)
                self._check_merged(value_node)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise ConstructorError(
                        None, None, f"key {str(key)[:40]!r} appears twice (also at line "
                        f"{seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: let the constructor report it
                pass

    def _merged_keys(self, node: Node) -> list[tuple[str, Node]]:
        """The plain keys a merged mapping brings (its own and those it merges in itself)."""
        if not isinstance(node, MappingNode):
            return []  # not a mapping: the constructor reports it
        out: list[tuple[str, Node]] = []
        for key, value in self._written(node):
            if key.tag == _MERGE:
                for inner in value.value if isinstance(value, SequenceNode) else [value]:
                    out += self._merged_keys(inner)
            elif isinstance(key, ScalarNode):
                out.append((str(key.value), key))
        return out

    def _check_merged(self, value: Node) -> None:
        """Refuse a key that two mappings merged into one mapping both give (YAML keeps the
        first one's silently)."""
        sources = value.value if isinstance(value, SequenceNode) else [value]
        given: dict[str, Node] = {}
        for source in sources:
            if isinstance(source, MappingNode):
                self._check_mapping(source)
            for name in dict(self._merged_keys(source)):
                if name in given:
                    raise ConstructorError(
                        None, None, f"key {name[:40]!r} is merged in from two mappings (also "
                        f"at line {given[name].start_mark.line + 1}); give it once",
                        source.start_mark)
                given[name] = source


# PyYAML follows YAML 1.1, where ``3e-1`` and ``1e-10`` (no dot) are strings: read them as the
# numbers a user means
SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_suite_yaml(text: str, source: str) -> Any:
    """The parsed document of a suite file's text; every problem is one ``UserError`` naming
    ``source`` (and the key path or line)."""
    try:
        return yaml.load(text, Loader=SuiteLoader)  # noqa: S506 - a SafeLoader subclass
    except SuiteTooLarge as err:
        raise UserError(err.message, where=f"{source}: {err.where}") from None
    except ValueError as err:  # a value PyYAML cannot build, e.g. an integer over 4300 digits
        raise UserError(f"invalid YAML value ({str(err)[:100]})", where=source) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"invalid YAML{at}: {problem}", where=source) from None


def read_suite_file(path: str | Path) -> Any:
    """The parsed document of the suite file at ``path``: read without blocking (a FIFO or a
    folder is refused), at most ``MAX_SUITE_BYTES``, UTF-8, then ``read_suite_yaml``. Imports
    neither torch nor a plugin, so the CLI refuses a bad file before it loads them."""
    path = Path(path)
    # a read error, a FIFO or a folder is a one-line UserError (never blocks)
    data = read_regular(path, follow_links=True, limit=MAX_SUITE_BYTES + 1)
    if data is None:
        raise UserError("suite file not found", where=str(path))
    # the size first: the cut at MAX_SUITE_BYTES + 1 may split a character
    if len(data) > MAX_SUITE_BYTES:
        raise UserError(f"the suite file is larger than {MAX_SUITE_BYTES >> 10} KiB",
                        where=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text file", where=str(path)) from None
    return read_suite_yaml(text, str(path))

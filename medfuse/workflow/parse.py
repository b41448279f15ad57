"""Reading a workflow file's YAML in bounded time and memory, with the line of every node.

A workflow file is small and hand-written, so anything that makes a YAML
parser expensive is refused with its line (``<file>:<line>: <why>``):

* files over :data:`MAX_WORKFLOW_BYTES` (checked before reading the rest);
* aliases (``*name``, and so ``<<:`` merge keys): one alias can stand for a
  tree of any size ("billion laughs", also inside a field meant to be a
  string), and an alias to an enclosing node makes a recursive structure;
* nesting deeper than :data:`MAX_DEPTH`, refused while composing, before
  Python's recursion limit is reached;
* integers longer than :data:`MAX_INT_DIGITS`, refused before conversion
  (Python refuses to convert beyond 4300 digits, with a ValueError).

Duplicate keys are refused too (PyYAML would keep the last silently).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medfuse.errors import WorkflowError

#: Limits that bound the time and memory a workflow file can cost to read (docs/workflows.md).
MAX_WORKFLOW_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 20


def parse_workflow_file(path: Path) -> tuple[Any, dict]:
    """(the document, a map from document path to 1-based line) of a workflow file."""
    return _parse_with_lines(_read_text(path), path)


def _read_text(path: Path) -> str:
    """The file's text, refused beyond MAX_WORKFLOW_BYTES before it is read."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_WORKFLOW_BYTES + 1)
        if len(raw) > MAX_WORKFLOW_BYTES:
            raise WorkflowError(f"{path}: workflow file is larger than {MAX_WORKFLOW_BYTES // 1024} KiB; refused")
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"{path}: cannot read workflow file: {exc}") from exc


class _Refused(yaml.MarkedYAMLError):
    """A construct the workflow loader refuses (aliases, deep nesting, huge integers), with its place."""


class _WorkflowLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses aliases, deep nesting and huge integers (module docstring)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(problem=f"alias *{event.anchor} refused: aliases and merge keys are not allowed in a "
                                   "workflow file (write the value out)", problem_mark=event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep; refused",
                               problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise _Refused(problem=f"integer with {digits} digits refused (at most {MAX_INT_DIGITS})",
                           problem_mark=node.start_mark)
        return super().construct_yaml_int(node)


_WorkflowLoader.add_constructor("tag:yaml.org,2002:int", _WorkflowLoader.construct_yaml_int)


def _parse_with_lines(text: str, path: Path) -> tuple[Any, dict]:
    """Return the document and a map from document path to 1-based line."""
    loader = _WorkflowLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        raise WorkflowError(f"{path}:{exc.problem_mark.line + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WorkflowError(f"{path}{where}: not valid YAML: {problem}") from exc
    finally:
        loader.dispose()
    if node is None:
        raise WorkflowError(f"{path}:1: the workflow file is empty")
    lines: dict = {}
    _index_lines(node, (), lines, path)
    return data, lines


def _index_lines(node: yaml.Node, where: tuple, lines: dict, path: Path) -> None:
    lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise WorkflowError(f"{path}:{key_node.start_mark.line + 1}: duplicate key '{key}'")
            seen.add(key)
            lines[("key",) + where + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, where + (key,), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, where + (i,), lines, path)

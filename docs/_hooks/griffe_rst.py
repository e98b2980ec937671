"""Griffe extension: render the reST roles used in constrained_grad's docstrings.

The docstrings follow the Google style with Sphinx roles inside (``:math:`...```,
``:class:`~pkg.Name```, ``.. math::``). mkdocstrings renders Markdown, so before parsing this
extension rewrites ``Example:`` sections to ``Examples:`` (rendered as doctest code), reST
definition lists to Markdown ones, jointly documented arguments (``low, high:``) to one
item per argument, inline maths to ``\\(...\\)`` and display maths to
``$$...$$`` (both read by pymdownx.arithmatex), and cross-reference roles to code spans.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH = re.compile(r":math:`([^`]+)`")
_XREF = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
# Google style reads "Examples:" as doctest blocks but "Example:" as a free-text admonition
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


def _xref(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    if match.group(1):  # "~a.b.C" shows "C"
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _display_math(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body = [stripped[len(".. math::") :].strip()]
            i += 1
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
            ):
                body.append(lines[i].strip())
                i += 1
            content = " ".join(b for b in body if b)
            out.extend([indent + "$$", indent + content, indent + "$$", ""])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_TERM = re.compile(r"``[^`]+``")


def _definition_lists(text: str) -> str:
    """reST definition lists (a ````term```` line, then an indented body) to Markdown's."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _TERM.fullmatch(line) and nxt.startswith("    ") and nxt.strip():
            if out and out[-1].strip():
                out.append("")
            out += [line, ":   " + nxt.strip()]
            i += 2
            while i < len(lines) and lines[i].startswith("    ") and lines[i].strip():
                out.append("    " + lines[i].strip())
                i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_SECTION = re.compile(r"^(Args|Arguments|Parameters):\s*$")
_JOINT_ITEM = re.compile(r"^(\s+)(\w+(?:\s*(?:,|/)\s*\w+)+):(.*)$")


def _split_joint_args(text: str) -> str:
    """Google-style ``a, b: text`` or ``a / b: text`` items become one item per name.

    The docstrings document related arguments together; Griffe reads one name per item.
    """
    lines = text.split("\n")
    out: list[str] = []
    in_args = False
    item_indent: int | None = None  # indentation of the items of the current Args section
    i = 0
    while i < len(lines):
        line = lines[i]
        indent_now = len(line) - len(line.lstrip())
        if _SECTION.match(line):
            in_args, item_indent = True, None
        elif line and not line[0].isspace():
            in_args = False
        elif in_args and line.strip() and item_indent is None:
            item_indent = indent_now
        m = _JOINT_ITEM.match(line) if in_args and indent_now == item_indent else None
        if m is None:
            out.append(line)
            i += 1
            continue
        indent, names, first = m.group(1), re.split(r"\s*(?:,|/)\s*", m.group(2)), m.group(3)
        body = [first]
        i += 1
        while (
            i < len(lines)
            and lines[i].strip()
            and len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i])
            i += 1
        for name in names:
            out.append(f"{indent}{name}:{body[0]}")
            out += body[1:]
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """Rewrite the reST constructs found in the package's docstrings."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _split_joint_args(text)
    text = _definition_lists(text)
    text = _display_math(text)
    text = _MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    return _XREF.sub(_xref, text)


class RstRoles(griffe.Extension):
    """Apply :func:`rst_to_markdown` to every docstring Griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)

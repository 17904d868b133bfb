"""A griffe extension that lets mkdocstrings read jnn's docstrings as written.

* ``jnn.Module`` subclasses become frozen dataclasses in ``__init_subclass__``, which static
  analysis cannot see, so their fields would not appear in the signature (and every
  documented argument would warn). This synthesises ``__init__`` from the annotated fields,
  in definition order, parents first, as ``dataclasses`` does.
* The docstrings keep reST's ``.. math::``, ``:math:`` and literal ``::`` blocks (they
  double as Sphinx and doctest sources). Markdown has none of them: a math block becomes
  ``$$ ... $$`` and the role ``$...$``, which ``pymdownx.arithmatex`` keeps intact for
  KaTeX (``docs/js/math.js``) to typeset; a literal block becomes fenced code. A singular
  ``Example:`` section (the house style's spelling) is read as ``Examples:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MODULE = "jnn._module.Module"


def _is_layer(cls: griffe.Class) -> bool:
    try:
        return any(parent.path == _MODULE for parent in cls.mro())
    except ValueError:
        return False


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    fields: dict[str, griffe.Parameter] = {}
    for owner in [*reversed(cls.mro()), cls]:
        for member in owner.members.values():
            if member.is_alias or not member.is_attribute or member.annotation is None:
                continue
            if "instance-attribute" not in member.labels:
                continue  # a ClassVar, not a field
            fields[member.name] = griffe.Parameter(
                member.name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=member.value,
            )
    return list(fields.values())


def _add_init(cls: griffe.Class) -> None:
    if "__init__" in cls.members or not _is_layer(cls):
        return
    self = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(self, *_fields(cls)),
        returns="None",
    )
    cls.set_member("__init__", init)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence(lines: list[str], start: int, indent: int, first: str, lang: str) -> tuple[list, int]:
    """Gather the block indented deeper than ``indent`` after ``start`` into a fence."""
    body = [first] if first else []
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip():
        body.pop(0)
    deep = [_indent(b) for b in body[1 if first else 0 :] if b.strip()]
    cut = min(deep, default=0)
    text = [body[0].strip()] if first else []
    text += [b[cut:] for b in body[1 if first else 0 :]]
    pad = " " * indent
    return ["", f"{pad}```{lang}", *(pad + t if t else "" for t in text), f"{pad}```", ""], i


_MATH = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_MATH_ROLE = re.compile(r":math:`\s*([^`]*?)\s*`")
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


def _math_block(lines: list[str], start: int, indent: int, first: str) -> tuple[list, int]:
    """Gather a ``.. math::`` block (its first line may follow the directive) as ``$$``."""
    fence, i = _fence(lines, start, indent, first, "")
    pad = " " * indent
    # A blank line would end the Markdown block (and is a paragraph break in TeX).
    body = [line for line in fence[2:-2] if line.strip()]
    return ["", f"{pad}$$", *body, f"{pad}$$", ""], i


def _markdown(doc: str) -> str:
    # griffe reads only the plural as an examples section (with ``>>>`` blocks as code).
    doc = _EXAMPLE.sub(r"\1Examples:", doc)
    doc = _MATH_ROLE.sub(r"$\1$", doc)
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH.match(line)
        if math:
            block, i = _math_block(lines, i + 1, len(math.group(1)), math.group(2))
            out += block
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            text = line.rstrip()[:-2].rstrip()
            out.append(text + (":" if text and not text.endswith(":") else ""))
            block, i = _fence(lines, i + 1, _indent(line), "", "python")
            out += block
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class JnnDocstrings(griffe.Extension):
    """Dataclass signatures for ``jnn.Module`` subclasses; Markdown-friendly docstrings."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        del kwargs
        seen: set[str] = set()

        def visit(obj: griffe.Object) -> None:
            if obj.path in seen:
                return
            seen.add(obj.path)
            if obj.docstring is not None:
                obj.docstring.value = _markdown(obj.docstring.value)
            if isinstance(obj, griffe.Class):
                _add_init(obj)
            for member in list(obj.members.values()):
                if not member.is_alias:
                    visit(member)

        visit(pkg)

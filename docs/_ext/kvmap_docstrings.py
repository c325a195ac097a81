"""A griffe extension that lets mkdocstrings render kvmap's reStructuredText-flavoured
docstrings as Markdown (used by mkdocs.yml; not part of the kvmap package).

kvmap's docstrings are written for ``help()`` and Sphinx: cross-references are roles such
as ``:class:`~kvmap.Error``` and examples are doctest blocks (``>>>`` lines).  Markdown has
neither, so before rendering this extension

- turns every role into an optional autorefs link (a link when the target is in the API
  reference, plain code otherwise: ``~`` shows the last name only, as in Sphinx);
- fences every doctest block as ``pycon`` so it renders as code.

The docstrings themselves are untouched in the source; ``help()`` still shows them as is.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):`(~?)([\w.]+)`")

# Where the API reference renders objects whose canonical home is a private module.
_PUBLIC = {
    "kvmap.db.Database": "kvmap.Database",
    "kvmap.db.open": "kvmap.open",
    "kvmap.txn.Snapshot": "kvmap.Snapshot",
    "kvmap.txn.WriteTxn": "kvmap.WriteTxn",
}


def _public(path: str) -> str:
    for private, public in _PUBLIC.items():
        if path == private or path.startswith(private + "."):
            return public + path[len(private) :]
    return path


def _lookup(scope: Any, name: str) -> Any:
    try:
        return scope[name]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(obj: Any, name: str) -> str:
    """The identifier of ``name`` as seen from ``obj``: ``kvmap.X`` from the package,
    anything else from the enclosing class, then the module; else the name as written."""
    root = obj.package
    if name.startswith(root.name + "."):
        target = _lookup(root, name[len(root.name) + 1 :])
    else:
        target = None
        scope = obj
        while scope is not None and target is None:
            if scope.is_class or scope.is_module:
                target = _lookup(scope, name)
            if scope.is_module:
                break  # like Sphinx: the current module, not its package
            scope = scope.parent
    if target is None:
        return name
    try:
        return _public(target.final_target.path if target.is_alias else target.path)
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return name


def _roles(obj: Any, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        short, name = match.groups()
        title = name.rsplit(".", 1)[-1] if short else name
        ident = html.escape(_resolve(obj, name), quote=True)
        return f'<autoref identifier="{ident}" optional><code>{html.escape(title)}</code></autoref>'

    return _ROLE.sub(link, text)


def _fence_doctests(text: str) -> str:
    """Wrap each doctest block (from a ``>>>`` line to the next blank line) in a fence."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(indent + "```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _convert(obj: Any, text: str) -> str:
    # Roles outside code only: a doctest block keeps its text exactly.
    parts = re.split(r"(```pycon\n.*?\n\s*```)", _fence_doctests(text), flags=re.S)
    return "".join(p if p.startswith("```pycon") else _roles(obj, p) for p in parts)


class KvmapDocstrings(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def walk(obj: Any) -> None:
            if id(obj) in seen or obj.is_alias:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, obj.docstring.value)
            for member in list(obj.members.values()):
                walk(member)

        walk(pkg)

"""`${VAR}` and `${VAR:-default}` in config values, expanded from the environment at load.

Expansion happens on the composed YAML's scalars, not on the raw text: a variable can set a
value (`requests_per_unit: ${LOGIN_LIMIT:-5}`) but cannot inject YAML structure, and errors
keep the line of the scalar that names the variable. A plain scalar whose type came from its
text (a number, a boolean) gets its type again from the expanded text, so `${N:-5}` is a
number. So does a quoted scalar that is one reference and nothing else, because YAML's flow
maps (`{unit: minute, requests_per_unit: "${N}"}`) need the quotes; other quoted text stays
a string. `$$` is a literal `$`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import yaml

from ratelimitd.config.schema import ErrorList

_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>\$\{[^}]*\}?)"
)
_RESOLVER = yaml.SafeLoader("")
_STR = "tag:yaml.org,2002:str"


class UnsetVariable(Exception):
    pass


def expand_environment(
    root: yaml.Node, environ: Mapping[str, str], errors: ErrorList
) -> dict[str, str | None]:
    """Expands every reference under `root` in place; returns the variables read.

    Each problem (an unset variable without a default, a malformed reference) is added to
    `errors` with the scalar's line.
    """
    used: dict[str, str | None] = {}
    for node in _scalars(root):
        if "$" not in node.value:
            continue
        try:
            expanded = _REFERENCE.sub(lambda match: _value(match, environ, used), node.value)
        except UnsetVariable as exc:
            errors.add(node, "", str(exc))
            continue
        _retag(node, expanded, whole=_REFERENCE.fullmatch(node.value) is not None)
    return used


def _value(match: re.Match[str], environ: Mapping[str, str], used: dict[str, str | None]) -> str:
    if match.group(0) == "$$":
        return "$"
    if match.group("bad") is not None:
        raise UnsetVariable(
            f"malformed reference '{match.group('bad')}' (write ${{NAME}} or ${{NAME:-default}}, "
            "or $$ for a literal $)"
        )
    name, default = match.group("name"), match.group("default")
    value = environ.get(name)
    used[name] = value
    if value is not None:
        return value
    if default is not None:
        return default
    raise UnsetVariable(
        f"environment variable '{name}' is not set (write ${{{name}:-default}} to give a default)"
    )


def _retag(node: yaml.ScalarNode, expanded: str, whole: bool) -> None:
    """Sets the new text and, where the type comes from the text, the type of the new text."""
    plain_implicit = node.style is None and node.tag == _implicit_tag(node.value)
    quoted_reference = whole and node.style in ("'", '"') and node.tag == _STR and expanded
    node.value = expanded
    if plain_implicit or quoted_reference:
        node.tag = _implicit_tag(expanded)


def _implicit_tag(text: str) -> str:
    """The type YAML gives `text` written as a plain scalar."""
    return str(_RESOLVER.resolve(yaml.ScalarNode, text, (True, False)))  # type: ignore[no-untyped-call]


def _scalars(root: yaml.Node) -> Iterator[yaml.ScalarNode]:
    """Every scalar under `root`, keys included, without recursion (aliases seen once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            yield node
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                stack.extend((value, key))

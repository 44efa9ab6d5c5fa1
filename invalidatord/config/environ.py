"""`${VAR}` and `${VAR:-default}` in config values, from the process environment.

Distribution ids and queue URLs differ per environment; one file serves them all. `$$` is a
literal `$`; a `$` followed by anything else than `{` or `$` is left as written (`$5`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["substitute"]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """`text` with every `${VAR}` / `${VAR:-default}` replaced and `$$` made `$`.

    `${VAR:-default}` takes the default when VAR is unset or empty (as the shell does).
    Raises ValueError naming the variable when one is unset and has no default, or when a
    `${...}` is malformed.
    """
    out: list[str] = []
    i = 0
    while True:
        dollar = text.find("$", i)
        if dollar < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:dollar])
        following = text[dollar + 1 : dollar + 2]
        if following == "$":
            out.append("$")
            i = dollar + 2
            continue
        if following != "{":
            out.append("$")
            i = dollar + 1
            continue
        end = text.find("}", dollar + 2)
        if end < 0:
            raise ValueError(f"unclosed '${{' in {text!r} (write $$ for a literal $)")
        body = text[dollar + 2 : end]
        name, has_default, default = body.partition(":-")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"'${{{body}}}' is not a variable reference such as ${{NAME}} or "
                "${NAME:-default} (write $$ for a literal $)"
            )
        value = environ.get(name)
        if has_default:
            out.append(value if value else default)
        elif value is None:
            raise ValueError(
                f"environment variable {name!r} is not set "
                f"(set it, or give a default: ${{{name}:-value}})"
            )
        else:
            out.append(value)
        i = end + 1

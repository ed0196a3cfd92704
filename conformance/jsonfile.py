"""Reading JSON that strangers wrote: case files and reports arrive attached to bug reports and CI artifacts.

Python's reader is lenient where these files must not be: it accepts ``NaN`` and ``Infinity`` (not
JSON), lets a repeated key silently replace the first one (a file could show one value to a person
reading it and another to the suite), and lets a nesting bomb or a 5,000-digit integer escape as
``RecursionError`` or ``ValueError`` from deep inside. :func:`loads` refuses all of them with one
:class:`JSONError` that says what was wrong, for the caller to wrap with the file's name.
"""

from __future__ import annotations

import json
from typing import Any


class JSONError(ValueError):
    """Text that is not strict, unambiguous JSON; the message says why."""


def _refuse_constant(token: str) -> Any:
    raise JSONError(f"{token} is not a JSON number (JSON has no NaN or Infinity)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise JSONError(f"key {repeated[0]!r} appears twice in one object; which value is meant is ambiguous")
    return dict(pairs)


def loads(text: str) -> Any:
    """Parse strict JSON; raise :class:`JSONError` for invalid, ambiguous, absurdly nested or absurdly long input."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except JSONError:
        raise
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and an integer of more than 4,300 digits
        raise JSONError(str(exc)) from None

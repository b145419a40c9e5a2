"""What the engine drivers report for bad input: each case's exception as "Type: message"
(the tests check both), or "no error". Imported by the drivers, which run as scripts in the
engines' environments with this folder on their path."""

from __future__ import annotations

from collections.abc import Callable


def error_messages(cases: dict[str, Callable[[], object]]) -> dict[str, str]:
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = "no error"
        except Exception as e:  # the test checks the type and message
            out[name] = f"{type(e).__name__}: {e}"
    return out

"""`docteur serve`'s own option values; the shared kinds are in
`docteur_core/options.py`."""

from __future__ import annotations

from ..options import _refuse


def cache_size(text: str) -> str:
    """serve's --cache-size: `auto`, or a size nbdkit's cache filter takes
    (`serve.sizes`: 64M, 1G, 1048576; at least 1M). Returned as given: nbdkit
    gets exactly what the user wrote."""
    if text == "auto":
        return text
    from .sizes import cache_size_problem

    why = cache_size_problem(text)
    if why is not None:
        raise _refuse(f"{text!r} is {why}")
    return text

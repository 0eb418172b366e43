"""The guest-side reader: paths to bytes over a block device, standard library only.

`store` finds and decodes objects (IDX search, delta chains, caches),
`image` maps paths to objects in *light* or *fast* mode (the Mirage_kv.RO
API), `vocabulary` names kinds, ids, modes and modes of reading in the words
the CLI and JSON use too, `commands` holds the verbs shared by `docteur ls/cat/...` and the
guest entry point `python3 -S -m docteur_core.reader.guest`.

`Image` and friends are loaded on first use, not here, so that importing a
sibling (the guest's `--help`, the CLI's parser) costs nothing extra; type
checkers see them through an `if TYPE_CHECKING:` import, and `dir()` and
pydoc through `__all__` and `__dir__`.
"""

__all__ = ["Image", "MODES", "DEFAULT_MODE", "Node", "Stat", "CommitInfo", "split_path",
           "join_path", "kind_of", "kv_kind", "VALUE", "DICTIONARY"]  # a literal: type checkers read it as the exports
_PUBLIC = frozenset(__all__)

# Type checkers and IDEs see the real names; at run time they stay lazy (the
# `if` never runs: `typing.TYPE_CHECKING` would cost the import it spares).
# `__getattr__` is hidden from checkers: seen, it would make any name valid.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import CommitInfo, Image, Node, Stat, join_path, split_path
    from .vocabulary import DEFAULT_MODE, DICTIONARY, MODES, VALUE, kind_of, kv_kind
else:
    def __getattr__(name: str) -> object:
        if name in _PUBLIC:
            from . import image
            return getattr(image, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so dir(), pydoc and completion list them."""
    return sorted(set(globals()) | set(_PUBLIC))

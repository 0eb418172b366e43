"""The guest-side reader: paths to bytes over a block device, standard library only.

`store` finds and decodes objects (IDX search, delta chains, caches),
`image` maps paths to objects in *light* or *fast* mode (the Mirage_kv.RO
API), `vocabulary` names kinds, ids, modes and modes of reading in the words
the CLI and JSON use too, `commands` holds the verbs shared by `docteur ls/cat/...` and the
guest entry point `python3 -S -m docteur_core.reader.guest`.

`Image` and friends are loaded on first use, not here, so that importing a
sibling (the guest's `--help`, the CLI's parser) costs nothing extra.
"""

_PUBLIC = ("Image", "MODES", "DEFAULT_MODE", "Node", "Stat", "CommitInfo", "split_path",
           "join_path", "kind_of", "kv_kind", "VALUE", "DICTIONARY")


def __getattr__(name: str):
    if name in _PUBLIC:
        from . import image
        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

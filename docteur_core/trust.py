"""What a host command trusts when it opens an image.

Every verb that reads an image (ls, cat, stat, tree, info, extract, diff,
mount) opens it here, under the options `options.add_trust_arguments`
declares, so that they all trust the same things in the same words:

- the commit: the header's, unless `--commit ID` (or an http(s) URL ending
  in `ID.img`) pins another, and then any other is refused before a byte
  of the image is read;
- every object read is hashed back to that commit (`--no-verify` trusts
  the image's own CRC-32s and path index instead: `reader/image.py`);
- `--allowed-signers FILE`: the commit must also carry an SSH signature
  (git's `gpgsig`) by a key FILE lists, checked by `ssh-keygen` (`sign/`).

The guest has no `ssh-keygen`: the host checks a signer and hands the
guest the commit id it proved (`docteur boot`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DamagedImage, DocteurError, WrongCommit

if TYPE_CHECKING:
    from .reader.image import Image


def open_image(source: str, args: Any, **limits: Any) -> Image:
    """`Image.open(source)` with the mode, block size, pin, verification and
    signers `args` holds, and the `limits` the verb offers; damage is one
    line naming `source`."""
    from .reader.image import Image

    try:
        image = Image.open(source, args.mode, verify=getattr(args, "verify", True),
                           commit=getattr(args, "commit", None),
                           block_size=getattr(args, "block_size", None), **limits)
        try:
            check_signers(image, getattr(args, "allowed_signers", None))
        except BaseException:
            image.close()
            raise
        return image
    except DamagedImage as exc:  # name the image: the user may have several
        raise DocteurError(f"{source}: {exc}") from None


def commit_bytes(image: Image) -> bytes:
    """The image's commit object, hashed against the header's id whether
    or not the image verifies what it reads (a signature is over these)."""
    from .format.pack import object_id

    store = image.store
    _, raw = store.read_object(store.commit_id, "commit")
    if object_id("commit", raw) != store.commit_id:
        raise DamagedImage(f"SHA-1 mismatch: the commit object does not hash to "
                           f"{store.commit_id.hex()}", "commit")
    return raw


def check_signers(image: Image, allowed_signers: str | None) -> str | None:
    """The principal that signed the image's commit, when `allowed_signers`
    is given (WrongCommit if no key of it did); None otherwise."""
    if allowed_signers is None:
        return None
    from .sign import check_signature

    principal = check_signature(commit_bytes(image), allowed_signers)
    if not principal:  # pragma: no cover - check_signature raises instead
        raise WrongCommit("the commit is not signed by an allowed key", "commit")
    return principal

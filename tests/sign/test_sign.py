"""A signer as the root of trust: `make --sign KEY`, `verify --allowed-signers FILE`.

Judged against git, with real `ssh-keygen -t ed25519` keys: a commit signed
here is byte for byte the one `git commit -S` (gpg.format=ssh) makes of the
same payload, `git verify-commit` says "Good" of it, and each refusal
(another key, a forged commit in a new valid image, an unsigned image) is
one line and exit 1, as `git verify-commit` refuses the same commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.blockdev.device import open_device
from docteur_core.errors import BuildError, DocteurError, WrongCommit
from docteur_core.format.pack import object_id
from docteur_core.format.signed import (BAD, GOOD, NONE, UNKNOWN, add_signature, describe,
                                        signature_format, split_signed, ssh_signature_key)
from docteur_core.make import make_image
from docteur_core.reader import Image
from docteur_core.sign import check_image, check_signature, sign_commit, signature_info
from docteur_core.verify import verify_image

from tests.helpers import forge
from tests.helpers.signing import allowed_file, keygen
from tests.helpers.support import GIT_ENV, REPO_ROOT, git

DATE = "2026-01-01T00:00:00Z"


def docteur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    alice = keygen(tmp / "alice", "alice")
    bob = keygen(tmp / "bob", "bob")
    return {"alice": alice, "bob": bob,
            "allowed": allowed_file(tmp / "allowed", "alice@example.com", alice),
            "others": allowed_file(tmp / "others", "bob@example.com", bob)}


def write_source(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hello</h1>\n")
    (root / "docs" / "guide.md").write_text("# guide\n" * 50)
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    return root


@pytest.fixture(scope="module")
def signed(keys, tmp_path_factory):
    """(source, signed image, its build result)."""
    tmp = tmp_path_factory.mktemp("signed")
    src = write_source(tmp / "src")
    img = tmp / "signed.img"
    result = make_image(src, img, date=DATE, sign=keys["alice"], warn=lambda _: None)
    return src, img, result


def raw_commit(img: Path) -> bytes:
    with Image.open(str(img), verify=True) as image:
        return image.store.read_object(image.store.commit_id, "commit")[1]


def git_verify_commit(tmp: Path, raw: bytes, allowed: Path) -> subprocess.CompletedProcess:
    """`git verify-commit` of the commit object `raw`, written into a bare repository."""
    repo = tmp / "judge.git"
    if not repo.exists():
        git("init", "-q", "--bare", str(repo))
    oid = git("hash-object", "-t", "commit", "-w", "--literally", "--stdin", cwd=repo,
              input=raw).decode().strip()
    assert oid == object_id("commit", raw).hex()
    return subprocess.run(["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}",
                           "verify-commit", oid], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})


# --- the signed image -------------------------------------------------------------

def test_signed_image_verifies_with_the_allowed_signers(keys, signed, tmp_path):
    _, img, result = signed
    proc = docteur("verify", "--allowed-signers", keys["allowed"], img)
    assert proc.returncode == 0, proc.stderr
    fingerprint = result.signed_by
    assert fingerprint.startswith("ED25519 key SHA256:")
    assert proc.stdout.splitlines()[:4] == [
        f"commit\t: {result.commit}", 'author\t: "docteur" <docteur@localhost>',
        f"root\t: {result.tree}", f"signature\t: good (alice@example.com, {fingerprint})"]
    # the API: check_image on an open image, verify_image on a device
    with Image.open(str(img)) as image:
        assert check_image(image, keys["allowed"]) == "alice@example.com"
    report = verify_image(open_device(str(img)), allowed_signers=str(keys["allowed"]))
    assert report.ok and report.signature.state == GOOD
    assert report.signature.principal == "alice@example.com"
    # without a file: signed, not checked
    plain = docteur("verify", img)
    assert plain.returncode == 0
    assert f"signature\t: unknown ({fingerprint}, not checked)" in plain.stdout.splitlines()
    # git agrees
    judged = git_verify_commit(tmp_path, raw_commit(img), keys["allowed"])
    assert judged.returncode == 0, judged.stderr
    assert judged.stderr.startswith('Good "git" signature for alice@example.com with ED25519 key')


def test_signed_commit_is_where_git_puts_it_and_builds_are_reproducible(keys, signed, tmp_path):
    src, img, result = signed
    raw = raw_commit(img)
    head, _, message = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    assert [line.split(b" ")[0] for line in lines[:4]] == [b"tree", b"author", b"committer",
                                                          b"gpgsig"]
    assert lines[3] == b"gpgsig -----BEGIN SSH SIGNATURE-----"
    assert all(line.startswith(b" ") for line in lines[4:])
    assert lines[-1] == b" -----END SSH SIGNATURE-----"
    assert message == b"docteur image\n"
    # Ed25519 signatures are deterministic: the same image, byte for byte
    again = tmp_path / "again.img"
    assert make_image(src, again, date=DATE, sign=keys["alice"],
                      warn=lambda _: None).commit == result.commit
    assert again.read_bytes() == img.read_bytes()
    # the unsigned build names the same tree, another commit
    unsigned = make_image(src, tmp_path / "unsigned.img", date=DATE, warn=lambda _: None)
    assert unsigned.tree == result.tree and unsigned.commit != result.commit
    payload, signature = split_signed(raw)
    assert payload == raw_commit(tmp_path / "unsigned.img")
    assert add_signature(payload, signature) == raw


def test_same_bytes_as_git_commit_dash_s(keys, tmp_path):
    """git commit -S with gpg.format=ssh, and sign_commit of its payload: one commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "f").write_text("f\n")
    git("add", "f", cwd=repo)
    git("-c", "gpg.format=ssh", "-c", f"user.signingKey={keys['alice']}", "commit", "-q",
        "-S", "-m", "signed by git\n\nwith a body\n", cwd=repo)
    theirs = git("cat-file", "commit", "HEAD", cwd=repo)
    payload, signature = split_signed(theirs)
    assert signature is not None and signature_format(signature) == "ssh"
    assert b"gpgsig" not in payload
    assert sign_commit(payload, keys["alice"]) == theirs
    assert check_signature(theirs, keys["allowed"]) == "alice@example.com"


def test_another_keys_file_refuses(keys, signed, tmp_path):
    _, img, result = signed
    line = one_line(docteur("verify", "--allowed-signers", keys["others"], img))
    assert line.startswith(f"docteur verify: wrong image: commit {result.commit}: signed by an "
                           f"unknown key ({result.signed_by}")
    with Image.open(str(img)) as image, pytest.raises(WrongCommit, match="unknown key"):
        check_image(image, keys["others"])
    assert git_verify_commit(tmp_path, raw_commit(img), keys["others"]).returncode != 0
    # --json still shows the report, then the one line
    proc = docteur("verify", "--json", "--allowed-signers", keys["others"], img)
    assert proc.returncode == 1
    import json
    assert json.loads(proc.stdout)["signature"]["state"] == UNKNOWN


def forged_image(img: Path, out: Path, edit) -> bytes:
    """A new, valid image around the commit of `img` changed by `edit` (its
    signature kept) and re-hashed, with the same tree and blobs."""
    objs = []
    with Image.open(str(img), verify=True) as image:
        raw = image.store.read_object(image.store.commit_id, "commit")[1]
        ids = {image.root.raw_id} | {n.raw_id for n in image.walk()}
        for oid in sorted(ids):
            typ, data = image.store.read_object(oid)
            objs.append(forge.Obj(typ, data))
    forged = edit(raw)
    commit = forge.Obj("commit", forged)
    out.write_bytes(bytes(forge.build([commit, *objs], commit.oid)))
    return forged


def test_a_forged_commit_in_a_valid_image_fails(keys, signed, tmp_path):
    _, img, _ = signed
    out = tmp_path / "forged.img"
    forged = forged_image(img, out, lambda raw: raw.replace(b"docteur image\n",
                                                            b"docteur image, trust me\n"))
    fid = object_id("commit", forged).hex()
    plain = docteur("verify", out)
    assert plain.returncode == 0, plain.stderr  # an intact image, just not what was signed
    line = one_line(docteur("verify", "--allowed-signers", keys["allowed"], out))
    assert line.startswith(f"docteur verify: wrong image: commit {fid}: bad signature (")
    with Image.open(str(out)) as image, pytest.raises(WrongCommit, match="bad signature"):
        check_image(image, keys["allowed"])
    info = signature_info(forged, keys["allowed"])
    assert info.state == BAD
    judged = git_verify_commit(tmp_path, forged, keys["allowed"])
    assert judged.returncode != 0 and "Good" not in judged.stderr
    # the quick check reads the commit too, and refuses it just the same
    quick = one_line(docteur("verify", "--quick", "--allowed-signers", keys["allowed"], out))
    assert "bad signature" in quick


def test_a_signed_commit_with_another_committer_fails(keys, signed, tmp_path):
    _, img, _ = signed
    out = tmp_path / "moved.img"
    forged = forged_image(img, out, lambda raw: raw.replace(
        b"committer docteur <docteur@localhost> ", b"committer mallory <m@example.com> "))
    assert describe(forged).state == UNKNOWN  # still looks signed
    assert "bad signature" in one_line(docteur("verify", "--allowed-signers", keys["allowed"],
                                               out))


def test_an_unsigned_image_under_allowed_signers_fails(keys, signed, tmp_path):
    src, _, _ = signed
    img = tmp_path / "plain.img"
    result = make_image(src, img, date=DATE, warn=lambda _: None)
    line = one_line(docteur("verify", "--allowed-signers", keys["allowed"], img))
    assert line == (f"docteur verify: wrong image: commit {result.commit} is not signed (the "
                    f"allowed signers of {keys['allowed']} accept only commits signed by their "
                    "keys)")
    with Image.open(str(img)) as image, pytest.raises(WrongCommit, match="is not signed"):
        check_image(image, keys["allowed"])
    report = verify_image(open_device(str(img)))
    assert report.ok and report.signature.state == NONE
    # unsigned: the text output is the OCaml docteur's, no signature line
    assert "signature" not in docteur("verify", img).stdout


def test_missing_files_and_programs_are_one_line(keys, signed, tmp_path):
    src, img, _ = signed
    line = one_line(docteur("verify", "--allowed-signers", tmp_path / "nope", img))
    assert line == (f"docteur verify: {tmp_path / 'nope'}: cannot read the allowed signers file "
                    "(No such file or directory)")
    line = one_line(docteur("make", "--sign", tmp_path / "nokey", src, tmp_path / "x.img"))
    assert line == (f"docteur make: {tmp_path / 'nokey'}: cannot read the signing key (No such "
                    "file or directory)")
    (tmp_path / "notakey").write_text("hello\n")
    line = one_line(docteur("make", "--sign", tmp_path / "notakey", src, tmp_path / "x.img"))
    assert line.startswith(f"docteur make: {tmp_path / 'notakey'}: not an SSH key (")
    locked = keygen(tmp_path / "locked", "locked", passphrase="a secret")
    line = one_line(docteur("make", "--sign", locked, src, tmp_path / "x.img"))
    assert "an encrypted key must be in ssh-agent" in line
    assert not (tmp_path / "x.img").exists()
    # no ssh-keygen on PATH
    env_path = os.environ["PATH"]
    try:
        os.environ["PATH"] = str(tmp_path / "empty")
        with pytest.raises(DocteurError, match="ssh-keygen not found"):
            check_signature(raw_commit(img), keys["allowed"])
        with pytest.raises(BuildError, match="ssh-keygen not found"):
            make_image(src, tmp_path / "y.img", sign=keys["alice"], warn=lambda _: None)
    finally:
        os.environ["PATH"] = env_path


def test_a_public_key_with_its_private_half_in_ssh_agent(keys, signed, tmp_path):
    src, img, result = signed
    agent = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")],
                           capture_output=True, text=True, check=True)
    pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    env = dict(os.environ, SSH_AUTH_SOCK=str(tmp_path / "agent.sock"))
    try:
        subprocess.run(["ssh-add", "-q", str(keys["alice"])], env=env, check=True,
                       capture_output=True)
        pub = tmp_path / "alice.pub"
        pub.write_bytes((keys["alice"].parent / "alice.pub").read_bytes())
        proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE,
                               "--sign", str(pub), str(src), str(tmp_path / "agent.img")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
    finally:
        os.kill(pid, 15)
    assert (tmp_path / "agent.img").read_bytes() == img.read_bytes()


# --- repository sources keep their own signatures ------------------------------------

def test_repository_commits_keep_their_signature(keys, tmp_path):
    repo = tmp_path / "repo"
    write_source(repo)
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("-c", "gpg.format=ssh", "-c", f"user.signingKey={keys['bob']}", "commit", "-q", "-S",
        "-m", "from bob", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo).decode().strip()
    img = tmp_path / "repo.img"
    assert make_image(repo, img, warn=lambda _: None).commit == head
    good = docteur("verify", "--allowed-signers", keys["others"], img)
    assert good.returncode == 0, good.stderr
    assert "signature\t: good (bob@example.com, ED25519 key SHA256:" in good.stdout
    assert "signed by an unknown key" in one_line(
        docteur("verify", "--allowed-signers", keys["allowed"], img))
    # --sign on a repository: a usage error, nothing built
    proc = docteur("make", "--sign", keys["alice"], repo, tmp_path / "x.img")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("a Git repository's commit is stored as it is, with its "
                                        "own signature if it has one")
    assert not (tmp_path / "x.img").exists()
    with pytest.raises(BuildError, match="--sign signs a directory's commit"):
        make_image(repo, tmp_path / "x.img", sign=keys["alice"])


# --- the gpgsig header, as git reads it --------------------------------------------------

SIG = b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
PAYLOAD = (b"tree " + b"a" * 40 + b"\nauthor A <a@x> 1 +0000\ncommitter C <c@x> 2 +0000\n\n"
           b"message\ngpgsig in the message is message\n")


def test_split_signed_reads_the_header_as_git():
    signed = add_signature(PAYLOAD, SIG)
    assert signed.count(b"gpgsig ") == 2
    assert split_signed(signed) == (PAYLOAD, SIG)
    assert split_signed(PAYLOAD) == (PAYLOAD, None)
    # a SHA-256 repository's signature is neither payload nor ours (git drops it)
    other = signed.replace(b"\n\nmessage", b"\ngpgsig-sha256 x\n y\n\nmessage")
    assert split_signed(other) == (PAYLOAD, SIG)
    # no message, not even the blank line (--compat ocaml): the signature goes last
    bare = PAYLOAD.split(b"\n\n")[0] + b"\n"
    assert add_signature(bare, SIG) == bare + b"gpgsig " + SIG.replace(b"\n", b"\n ", 2)
    assert split_signed(add_signature(bare, SIG)) == (bare, SIG)
    # what can be said unchecked
    assert describe(PAYLOAD).state == NONE
    pgp = add_signature(PAYLOAD, b"-----BEGIN PGP SIGNATURE-----\nx\n-----END PGP SIGNATURE-----\n")
    assert describe(pgp).state == UNKNOWN and describe(pgp).format == "openpgp"
    assert ssh_signature_key(SIG) is None  # not an SSHSIG blob


def test_an_openpgp_signature_is_not_accepted(keys):
    pgp = add_signature(PAYLOAD, b"-----BEGIN PGP SIGNATURE-----\nx\n-----END PGP SIGNATURE-----\n")
    with pytest.raises(WrongCommit, match="openpgp signature: only SSH signatures are checked"):
        check_signature(pgp, keys["allowed"])

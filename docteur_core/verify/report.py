"""What a verification found, and how it is said.

`Report` is the result of `verify_image`: the commit, counts, the checks
run, and every problem as (region, where, what). It is also where the
checks record what they find (`problem`, `warning`, `check`): the one
report each step of the check is given. The region names are part
of the interface: the command line prints them, `--json` carries them, and
tests and scripts match on them, so they live here as constants and
nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..format import objects

if TYPE_CHECKING:
    from ..format.signed import SignatureInfo

# Regions named in problem lines; tests match on them.
R_IMAGE = "image"
R_HEADER = "header"
R_PADDING = "padding"
R_PACK_HEADER = "PACK header"
R_OBJ_HEADER = "object header"
R_OBJ_DATA = "object data"
R_DELTA_DATA = "delta data"
R_PACK_TRAILER = "PACK trailer"
R_IDX_HEADER = "IDX header"
R_IDX_FANOUT = "IDX fanout"
R_IDX_IDS = "IDX ids"
R_IDX_CRCS = "IDX CRCs"
R_IDX_OFFSETS = "IDX offsets"
R_IDX_CHECKSUMS = "IDX checksums"
R_OBJECTS = "objects"
R_PATH_INDEX = "path index"
# Beyond these, problems of one region are counted, not listed: a wrecked
# image must still give a readable report.
MAX_PROBLEMS_PER_REGION = 50
MAX_WARNINGS = 50

Problem = tuple[str, str, str]  # (region, where, what)


@dataclass
class Counts:
    objects: int = 0  # entries in the pack
    commits: int = 0
    trees: int = 0
    blobs: int = 0
    tags: int = 0
    deltas: int = 0
    files: int = 0  # regular and executable files reachable from the root
    links: int = 0  # symbolic links
    gitlinks: int = 0  # submodule commits (not in the image by design)
    directories: int = 0  # below the root
    bytes: int = 0  # content of the files and links, as listed by the trees
    executables: int = 0  # of `files`, those whose mode is 100755

    def kinds(self) -> dict[str, int]:
        """The paths below the root by kind, in reader/vocabulary.py's words
        (`files` above counts executables too; `links`, `gitlinks` are
        the OCaml docteur's words, kept)."""
        return {"file": self.files - self.executables, "executable": self.executables,
                "symlink": self.links, "directory": self.directories,
                "submodule": self.gitlinks}


@dataclass
class Report:
    """What `verify_image` found. `ok` is true only when no problem was found."""

    quick: bool = False
    capacity: int = 0
    commit: str | None = None
    tree: str | None = None
    author: objects.Signature | None = None
    committer: objects.Signature | None = None
    message: str | None = None  # its first MAX_SHOWN_MESSAGE characters at most
    message_complete: bool = True  # false when `message` is only its beginning
    commit_size: int | None = None  # bytes of the commit object
    block_sizes: list[int] = field(default_factory=list)
    # (end of the pack, IDX offset, end of the IDX) once the layout checks out:
    # what the plugin reports as data and zero extents.
    regions: tuple[int, int, int] | None = None
    # (region start, nodes start) of the path index region, when the image has one.
    path_index: tuple[int, int] | None = None
    counts: Counts = field(default_factory=Counts)
    checks: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    suppressed: dict[str, int] = field(default_factory=dict)
    hidden_warnings: int = 0
    # How delta bases were found: LRU hits, misses, objects rebuilt from the device.
    stats: dict[str, int] = field(default_factory=dict)
    # The commit the caller pinned (`commit=`), which the header matched.
    pin: str | None = None
    # The commit's signature (`format.signed.SignatureInfo`): none, good, bad,
    # unknown; None when the commit could not be read intact.
    signature: "SignatureInfo | None" = None
    # Problems found per region, listed or only counted (`problem`).
    _per_region: dict[str, int] = field(default_factory=dict, init=False, repr=False,
                                        compare=False)

    # -- recording, as the checks find things --------------------------------

    def problem(self, region: str, where: str, what: str) -> None:
        """Record a problem; past MAX_PROBLEMS_PER_REGION in a region, only count it."""
        n = self._per_region.get(region, 0)
        self._per_region[region] = n + 1
        if n >= MAX_PROBLEMS_PER_REGION:
            self.suppressed[region] = self.suppressed.get(region, 0) + 1
            return
        self.problems.append((region, where, what))

    def warning(self, region: str, where: str, what: str) -> None:
        """Record a warning; past MAX_WARNINGS, only count it."""
        if len(self.warnings) >= MAX_WARNINGS:
            self.hidden_warnings += 1
        else:
            self.warnings.append((region, where, what))

    def check(self, name: str) -> None:
        """Name a check as run (once, in the order they first run)."""
        if name not in self.checks:
            self.checks.append(name)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.suppressed

    def problem_lines(self) -> list[str]:
        lines = [format_problem(p) for p in self.problems]
        for region, n in self.suppressed.items():
            lines.append(f"{region}: {n} more problems not shown")
        return lines

    def warning_lines(self) -> list[str]:
        lines = [format_problem(p) for p in self.warnings]
        if self.hidden_warnings:
            lines.append(f"{R_OBJECTS}: {self.hidden_warnings} more warnings not shown")
        return lines

    def to_json(self) -> dict[str, Any]:
        def sig(s: objects.Signature | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"name": s.name, "email": s.email, "time": s.time,
                    "tz_minutes": s.tz_minutes}
        return {
            "ok": self.ok,
            "quick": self.quick,
            "commit": self.commit,
            "author": sig(self.author),
            "committer": sig(self.committer),
            "tree": self.tree,
            "root": self.tree,  # the same: the name before `tree` (info's word)
            "message": self.message,
            "message_complete": self.message_complete,
            "pin": self.pin,
            "signature": None if self.signature is None else self.signature.to_json(),
            "capacity": self.capacity,
            "size": self.capacity,  # the same: the name before `capacity` (info's word)
            "block_sizes": self.block_sizes,
            # `region_offset` as info says it; `start` and `nodes` (offsets
            # both) are the names before, kept.
            "path_index": None if self.path_index is None else
            {"region_offset": self.path_index[0], "nodes_offset": self.path_index[1],
             "start": self.path_index[0], "nodes": self.path_index[1]},
            "counts": dict(self.counts.__dict__),
            "kinds": self.counts.kinds(),
            "checks": list(self.checks),
            "problems": [{"region": r, "where": w, "what": t} for r, w, t in self.problems]
            + [{"region": r, "where": "", "what": f"{n} more problems not shown"}
               for r, n in self.suppressed.items()],
            "warnings": [{"region": r, "where": w, "what": t} for r, w, t in self.warnings],
        }


def format_problem(p: Problem) -> str:
    region, where, what = p
    return f"{region}: {what}, {where}" if where else f"{region}: {what}"


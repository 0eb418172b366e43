"""The limits every reader of an image shares: the reader, verify, the plugin.

An image comes from outside, and a few kilobytes of it can ask for
gigabytes of memory (a delta declaring a huge result, a zlib stream of
zeros), hours of CPU (a long chain of deltas of big objects) or billions of
paths (trees naming the same subtree twice, level after level). Every such
request is checked against one of these numbers *before* the memory or the
work is spent, and refused with `LimitExceeded` naming the limit; the same
numbers apply in the reader (`Image.open(..., max_object_size=...)`),
`docteur verify` (`--max-object-size`, `verify_image(max_object_size=...)`)
and the plugin's checks, so an image one accepts the others accept.

Standard library only, and nothing imported: the guest reads this.
"""

from __future__ import annotations

# The most bytes held in memory for one object: a delta's result, a delta
# base, a tree, a commit, what `Image.get` returns. git's own
# core.bigFileThreshold: git stores larger files whole, never as deltas,
# and docteur streams whole blobs (`docteur cat`, verify's hash) at any size.
MAX_OBJECT_SIZE = 512 << 20
# The largest file `docteur make` stores. Above MAX_OBJECT_SIZE a file is
# stored whole (the builder pins git's core.bigFileThreshold to it), and
# every reader streams whole blobs at any size (`cat`, verify's hash, the
# plugin's checks); `Image.get` refuses them, `Image.get_partial` and `cat`
# read them. So the builder's bound is the only one for files, and every
# image it makes is one its readers read.
MAX_FILE_SIZE = 4 << 30
# The most bytes built to answer one lookup: the base and every delta data
# and result of its chain, summed. A chain of git's maximum depth (4095) of
# small files costs a few MiB; a hostile chain of 10,000 deltas of 16 MiB
# objects would cost 160 GB.
MAX_LOOKUP_BYTES = 4 << 30
# The most paths one walk may name (fast mode's index, `walk`, `tree`,
# verify's count), and the most bytes those paths may add up to: a 6 KB
# image of 61 trees each naming the previous twice names 2^60 paths.
MAX_PATHS = 1_000_000
MAX_PATH_BYTES = 256 << 20
# The commit's header lines (tree, parents, author, committer, gpgsig...)
# are read at open; the message only when asked for.
MAX_COMMIT_HEADER = 1 << 20
# Whole blobs larger than this are streamed (hashed, or written out) as
# they inflate, never held.
STREAM_THRESHOLD = 16 << 20
# Output of one zlib call when streaming: memory per step, whatever the
# stream inflates to.
INFLATE_STEP = 1 << 20

"""`docteur diff`: which paths differ between two images, directories or
Git repositories, a host stage beside verify and mount.

`compare.py` is the comparison, pure (two trees' entries in, git's
`diff-tree -r` changes and their texts out); `command.py` opens the sides
(an image through the reader, a directory hashed as `docteur make` hashes
it, a repository's commit read with dulwich) and holds the verb.
"""

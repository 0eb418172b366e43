"""`docteur mount`: an image as a read-only file system on the host (FUSE).

`fs.py` maps the reader's answers to stat/readdir/readlink/read results,
`command.py` binds them to libfuse 3 through mfusepy (optional extra
`docteur[mount]`) and holds the `mount` and `umount` verbs.
"""

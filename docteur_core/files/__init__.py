"""The files of an image, on the host: `docteur ls`, `cat`, `stat`, `tree`,
`info` (command.py, over the reader's verbs) and `extract` (extract.py).

A host stage: it may import the reader, `trust` and `options`; the reader
never imports it, so a guest never loads argparse or the trust code.
"""

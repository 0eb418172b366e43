"""Serving images over NBD with nbdkit.

`plugin` is the nbdkit Python plugin itself (`nbdkit python
"$(docteur plugin-path)" image=disk.img`), a thin layer of nbdkit callbacks
over the reader's block rules; `imagecheck` decides whether an image may be
served; `command` is `docteur serve`, which runs nbdkit with the plugin and
nbdkit's cache filter.
"""

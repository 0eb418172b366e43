"""The bytes of an image, as pure functions: no I/O below this folder.

`layout` is the OCaml docteur's image header and padding rules; `pack`,
`idx` and `objects` are the Git formats inside it (pack entries and deltas,
`.idx` version 2, trees and commits), `inflate` the one inflater of a
pack entry's zlib stream (bounded, exact, CRC-checked). The reader, the builder, verify and
the plugin all decode through these, so a format rule lives in one place.
"""

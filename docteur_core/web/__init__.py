"""A static web server over an image: `docteur http` on the host, and the
same server inside a guest (`docteur boot IMAGE --http PORT`).

Standard library only (it runs in the guest, like the reader). The core is
sans-IO: `request` parses bytes into requests, `ranges` reads Range headers,
`site` answers a request with a response (looking paths up in the image,
through the reader's verified reads), `render` writes a response's head;
`server` is the thin socket shell (one selector loop, reader threads) and
`command`/`guest` the entry points. Imports: the reader, format and
blockdev only, never a host stage.
"""

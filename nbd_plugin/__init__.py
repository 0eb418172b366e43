"""The nbdkit plugin (docteur_plugin.py) and what it checks before serving (imagecheck.py)."""

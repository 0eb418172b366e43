"""The fuzzing harness (fuzz.py) and its independent reading of git's bytes (gitbytes.py)."""

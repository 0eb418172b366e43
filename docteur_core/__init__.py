"""docteur: directories and Git repositories as read-only disk images.

This package is imported inside minimal guests, so nothing imported from
here (or from the reader modules) may need anything outside the standard
library. The builder (`docteur_core.build`) is the only part that uses
dulwich and the `git` program, and it is imported lazily by the CLI.
"""

__version__ = "0.1.0"

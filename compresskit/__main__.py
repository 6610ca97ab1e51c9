"""``python -m compresskit`` runs the command line."""

from compresskit.cli import main

main()

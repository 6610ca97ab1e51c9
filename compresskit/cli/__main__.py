"""``python -m compresskit.cli`` runs the command line."""

from compresskit.cli import main

if __name__ == "__main__":
    main()

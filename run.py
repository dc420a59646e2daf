#!/usr/bin/env python3
"""BIDS Apps entrypoint (``/run.py`` in the images): the same command as ``diffdeur``."""

from diffdeur_bids.cli import main

if __name__ == "__main__":
    main()

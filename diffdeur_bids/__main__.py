"""``python -m diffdeur_bids``: the same as the ``diffdeur`` command."""

from .cli import main

main()

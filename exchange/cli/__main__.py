"""``python -m exchange.cli`` runs the ``exchange`` command."""

from exchange.cli.main import main

main()

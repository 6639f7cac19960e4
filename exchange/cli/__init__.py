"""The ``exchange`` command line."""

"""``python -m fetalplanes``: the same entry point as the ``fetalplanes`` command."""

from fetalplanes.cli import main

main()

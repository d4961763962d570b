"""``python -m fetalplanes.cli``: the same entry point as the ``fetalplanes`` command."""

from fetalplanes.cli import main

main()

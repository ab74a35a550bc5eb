"""`python -m mbtrain` is the same as the `mbtrain` command."""

from mbtrain.cli import main

main()

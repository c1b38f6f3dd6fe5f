"""`python -m gateway` is `flam-gateway`."""

from gateway.cli import main

main()

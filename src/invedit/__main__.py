"""``python -m invedit`` (what ``accelerate launch -m invedit bench …`` runs in each process)."""

from .cli import main

main()

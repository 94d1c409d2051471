"""`python -m agent` is the sofamesh CLI (used where the console script is not on PATH)."""

from agent.cli import main

main()

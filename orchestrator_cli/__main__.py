"""`python -m orchestrator_cli`: the same as the `orchestrator` command."""

from orchestrator_cli.commands import main

if __name__ == "__main__":
    main()

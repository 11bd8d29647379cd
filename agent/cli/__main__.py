"""`python -m agent.cli`: the `voicegate` command."""

from agent.cli.main import main

raise SystemExit(main())

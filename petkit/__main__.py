"""`python -m petkit ...` (what torchrun launches) is the same as the `petkit` command."""

from petkit.cli.main import main

raise SystemExit(main())

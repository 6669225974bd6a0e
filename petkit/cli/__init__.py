"""The `petkit` command."""

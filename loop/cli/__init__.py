"""The `distillery` commands, one module per command group."""

"""The examples: the built-in task and `data add` imports."""

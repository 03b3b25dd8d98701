"""Distillery.toml: the settings model, its error messages, presets, the workspace."""

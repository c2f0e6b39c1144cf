"""Tempest plugin: scenarios that boot servers and check, from the storage side,
which handler provided each root disk (see plugin.py, config.py)."""

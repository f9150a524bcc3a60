"""Stores other than the embedded engine. Nothing in the server imports this package yet:
it is the seed of issue 13's Store interface (see README, "Valkey Functions library")."""

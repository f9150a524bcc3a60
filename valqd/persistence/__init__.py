"""The append-only file: record format, live writer with fsync policies, loader, rewrite."""

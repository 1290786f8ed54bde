"""secure layer of petcamd (see docs/architecture.md for the import rules)."""

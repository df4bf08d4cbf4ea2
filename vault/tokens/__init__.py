"""API tokens: shown once, stored as a keyed hash, scoped to one tenant and one role."""

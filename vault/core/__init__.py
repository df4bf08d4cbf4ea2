"""Cross-cutting pieces of the service: request ids, health, the embedded scheduler."""

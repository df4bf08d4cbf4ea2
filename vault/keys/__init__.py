"""Tenants' keys: which backend holds each tenant's key-encryption keys, and the key ids there."""

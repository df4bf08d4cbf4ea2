"""Tenants and memberships: who belongs to which tenant, in which role."""

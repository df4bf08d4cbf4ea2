"""REST API plumbing shared by every app: authentication, roles, errors, pagination, schema."""

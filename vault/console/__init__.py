"""The admin web console (server-rendered). This package holds sign-in with MFA so far."""

"""People: the user model, password policy, sign-in lockout."""

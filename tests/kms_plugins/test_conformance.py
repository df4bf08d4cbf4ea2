"""The conformance suite, run against every backend: local, pkcs11, tpm, kmip."""

from kms_plugins.testing.conformance import *  # noqa: F403

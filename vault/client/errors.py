"""The errors of the ``cvault`` client and SDK.

Every error the SDK raises is a ``ClientError``. Each carries an ``exit_code`` that the command
line uses as its exit status, and a message meant for a person, on one line. Messages never
contain the API token, a PIN, a passphrase, a key or plaintext.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error of ``vault.client``.

    Attributes:
        exit_code: the ``cvault`` exit status for this error (1 unless a subclass says more).
    """

    exit_code = 1


class ConfigurationError(ClientError):
    """The local configuration is missing or wrong: not logged in, no key, an unreadable file."""

    exit_code = 2


class NotLoggedIn(ConfigurationError):
    """No server URL or token: neither ``cvault login`` nor ``CVAULT_URL``/``CVAULT_TOKEN``."""


class NoKeyConfigured(ConfigurationError):
    """Client-side encryption needs a key: run ``cvault key init`` first."""


class NetworkError(ClientError):
    """The server could not be reached, or the connection broke mid-transfer."""

    exit_code = 5


class ServerError(ClientError):
    """The server answered with an error.

    Attributes:
        status: the HTTP status.
        code: the API's stable error code (``not_found``, ``invalid_token``, ...).
        request_id: the server's request id, for its logs.
    """

    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        self.status = status
        self.code = code
        self.request_id = request_id
        suffix = f" (request {request_id})" if request_id else ""
        super().__init__(f"server error {status} {code}: {message}{suffix}")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """3 for "not found", 6 for authentication and permission errors, else 1."""
        if self.status == 404:
            return 3
        if self.status in (401, 403):
            return 6
        return 1


class ObjectNotFound(ClientError):
    """No object of that name (client-side names are only found with the key that made them)."""

    exit_code = 3


class InvalidName(ClientError):
    """An object name the client refuses (empty, too long, control characters)."""

    exit_code = 2


class DecryptionFailed(ClientError):
    """The object could not be opened: a wrong key, or a tampered or truncated envelope.

    Deliberately vague about which, like an AEAD's ``InvalidTag``. Raised before a single byte is
    released to its destination's final place (``get`` deletes its temporary file).
    """

    exit_code = 4


class WrongKey(DecryptionFailed):
    """None of the configured keys has a recipient stanza in the object's envelope."""


class KeyBackendFailure(ClientError):
    """The user's key backend (HSM, TPM, KMS, keystore) failed or could not be reached."""

    exit_code = 7


class AuditCheckFailed(ClientError):
    """An audit bundle, or a checkpoint or proof the server sent, failed a check: tampering, a
    rollback, rewritten history, a checkpoint no trusted key signed.

    Attributes:
        code: the stable code of the check that failed (``audit_bundle_rollback``, ...).
    """

    def __init__(self, message: str, code: str = "audit_check_failed") -> None:
        super().__init__(message)
        self.code = code


class UnknownLogKey(AuditCheckFailed):
    """The server's checkpoint is signed by no key saved for its log: the log's key changed, or
    someone else signed. ``cvault trust save --replace-keys`` trusts the new key, after an
    out-of-band check."""


class AuditUnanchored(ConfigurationError):
    """No trusted key for the log (``cvault trust save`` or ``--trust``): nothing was verified.

    Attributes:
        origin: the log the bundle claims.
        signing_keys: the keys the bundle names, unverified, to compare out of band.
    """

    def __init__(self, message: str, *, origin: str, signing_keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.origin = origin
        self.signing_keys = signing_keys


class ReportCheckFailed(ClientError):
    """An evidence pack, or the report CA certificate the server sent, failed a check: a file
    edited, added or removed, a manifest that does not verify, a signer the trusted CA did not
    issue, a tampered audit proof, a malformed pack.

    Attributes:
        code: the stable code of the failure (``pack_verification_failed``, ``pack_malformed``,
            ``report_ca_invalid``, ...).
        problems: each failed check of a pack, naming the file and what is wrong (may be empty).
    """

    def __init__(
        self,
        message: str,
        code: str = "pack_verification_failed",
        problems: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.problems = problems


class UnknownReportCa(ReportCheckFailed):
    """The server's report CA certificate is not the one saved: the CA changed, or someone else
    answers. ``cvault trust save --replace-keys`` trusts the new one, after an out-of-band check
    of its fingerprint."""


class ReportUnanchored(ConfigurationError):
    """No report CA certificate is trusted (``cvault trust save`` or ``--trust``): everything
    else in the pack verified, but only against the pack's own copy of the CA, which anyone could
    have made.

    Attributes:
        pack_ca_fingerprint: the SHA-256 of the pack's CA copy (unverified; compare it out of
            band).
    """

    def __init__(self, message: str, *, pack_ca_fingerprint: str) -> None:
        super().__init__(message)
        self.pack_ca_fingerprint = pack_ca_fingerprint

"""``cvault``: the command line of Ciphervault. Client-side encryption is the default.

Every command ends with exit status 0 on success; on failure it prints one line,
``cvault: error: ...``, on stderr and exits non-zero (see ``docs/cli.md`` for the codes). The API
token, PINs and passphrases are never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kms_plugins.errors import KeyBackendError
from kms_plugins.types import KeyRef
from vault.client import audit
from vault.client import config as cfg
from vault.client import report as packs
from vault.client.api import Api
from vault.client.errors import (
    AuditCheckFailed,
    AuditUnanchored,
    ClientError,
    ConfigurationError,
    DecryptionFailed,
    NoKeyConfigured,
    ReportCheckFailed,
    ReportUnanchored,
)
from vault.client.keys import KeyRing, KeySpec, backend_failure
from vault.client.progress import Progress
from vault.client.sdk import ObjectInfo, Vault
from vault.crypto import EnvelopeError
from vault.crypto.auditbundle import BundleReport

EXIT_INTERRUPTED = 130


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _printable(text: str) -> str:
    """A name safe to print on a terminal: control characters escaped."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch
        for ch in text
    )


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


# -- login ---------------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    """Check the URL and token against the server, then save them (0600)."""
    token = args.token
    if args.token_stdin:
        token = sys.stdin.readline().strip()
    if not token:
        raise ConfigurationError("give the API token with --token TOKEN or --token-stdin")
    login = cfg.Login(url=args.url.rstrip("/"), token=token, ca_file=_absolute(args.ca_file))
    api = Api(login)
    if api.insecure_transport:
        _say("cvault: warning: plain http to a remote host sends the token unencrypted")
    slug = ""
    if not args.no_check:
        vault = Vault(api, KeyRing(cfg.config_dir()))
        slug = vault.tenant_slug()
    directory = cfg.ensure_dir(cfg.config_dir())
    path = cfg.save_login(directory, login)
    where = f" (tenant {slug})" if slug else ""
    print(f"Logged in to {login.url}{where}; saved in {path}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    """Forget the saved login (keys stay)."""
    path = cfg.config_dir() / cfg.LOGIN_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    print("Logged out")
    return 0


# -- keys ----------------------------------------------------------------------------------------


def _spec_from_args(args: argparse.Namespace, directory: Path, role: str) -> KeySpec:
    suffix = "" if role == "primary" else "-recovery"
    kind = args.backend

    def need(*names: str) -> None:
        missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
        if missing:
            raise ConfigurationError(f"--backend {kind} needs {', '.join(missing)}")

    if kind == "local":
        keystore = _absolute(args.keystore) or str(directory / f"local{suffix}" / "keystore.json")
        cfg.ensure_dir(Path(keystore).parent)
        if args.passphrase_file:
            return KeySpec(
                "local", {"PATH": keystore}, {"PASSPHRASE": str(_absolute(args.passphrase_file))}
            )
        key_file = _absolute(args.key_file) or str(Path(keystore).parent / "master.key")
        return KeySpec("local", {"PATH": keystore, "KEY_FILE": key_file})
    if kind == "pkcs11":
        need("module", "token_label", "pin_file")
        return KeySpec(
            "pkcs11",
            {
                "MODULE": str(_absolute(args.module)),
                "TOKEN_LABEL": args.token_label,
                "PIN_FILE": str(_absolute(args.pin_file)),
            },
        )
    if kind == "tpm":
        state_dir = _absolute(args.state_dir) or str(directory / f"tpm{suffix}")
        cfg.ensure_dir(Path(state_dir))
        return KeySpec("tpm", {"TCTI": args.tcti or "device:/dev/tpmrm0", "STATE_DIR": state_dir})
    need("host", "ca_file", "cert_file", "key_file")
    options: dict[str, Any] = {
        "HOST": args.host,
        "PORT": args.port,
        "CA_FILE": _absolute(args.ca_file),
        "CERT_FILE": _absolute(args.cert_file),
        "KEY_FILE": _absolute(args.key_file),
    }
    if args.server_name:
        options["SERVER_NAME"] = args.server_name
    secret_files = (
        {"KEY_PASSWORD": str(_absolute(args.key_password_file))} if args.key_password_file else {}
    )
    return KeySpec("kmip", options, secret_files)


def cmd_key_init(args: argparse.Namespace) -> int:
    """Create the primary key (or, with --recovery, the recovery key) in a backend."""
    directory = cfg.ensure_dir(cfg.config_dir())
    keys = KeyRing.load(directory)
    role = "recovery" if args.recovery else "primary"
    try:
        ref = keys.create(role, _spec_from_args(args, directory, role))
    finally:
        keys.close()
    print(f"Created the {role} key {ref.key_id} (version {ref.version}) in {args.backend}")
    if role == "recovery":
        print("Every new upload is now also wrapped under the recovery key")
    return 0


def cmd_key_rotate(args: argparse.Namespace) -> int:
    """Rotate a key in its backend, then rewrap every stored version under the new version.

    With ``--rewrap-only`` no new key version is made: only versions not yet under the current
    versions are rewrapped (to finish an interrupted or failed rotation). With ``--no-rewrap``
    stored objects are left as they are (they stay readable under the older version).
    """
    role = "recovery" if args.recovery else "primary"
    keys = KeyRing.load(cfg.config_dir())
    try:
        if args.rewrap_only and not keys.configured:
            raise NoKeyConfigured("no key is configured: there is nothing to rewrap under")
        if not args.rewrap_only:
            ref = keys.rotate(role)
            print(f"Rotated the {role} key {ref.key_id} to version {ref.version}")
            print(f"New uploads are wrapped under version {ref.version}")
        if args.no_rewrap:
            print(
                "Stored objects keep their data keys wrapped under older versions (they stay "
                "readable); run 'cvault key rotate --rewrap-only' to rewrap them"
            )
            return 0
        try:
            current = keys.current_versions()
            if keys.rewrap_name_secret(current):
                _say("Rewrapped the name secret under the current key versions")
            vault = Vault(Api(cfg.load_login(cfg.config_dir())), keys)
            return _rewrap_all(vault, current)
        except ClientError as exc:
            _say(f"cvault: error: {exc}")
            _say(_UNFINISHED)
            return exc.exit_code
        except KeyboardInterrupt:
            _say("cvault: interrupted")
            _say(_UNFINISHED)
            return EXIT_INTERRUPTED
    finally:
        keys.close()


_UNFINISHED = (
    "cvault: stored objects were not all rewrapped: run 'cvault key rotate --rewrap-only' to "
    "finish (no new key version; versions already done are skipped)"
)


def _rewrap_all(vault: Vault, current: dict[str, KeyRef]) -> int:
    """Rewrap every version of every client-side object of this user; report and go on."""
    wanted = ", ".join(f"{role} v{ref.version}" for role, ref in current.items())
    objects, hidden = vault.list()
    mine = [o for o in objects if o.mode == "client" and o.version is not None]
    _say(f"Rewrapping {len(mine)} client-side object(s) under {wanted}")
    rewrapped = unchanged = 0
    failures: list[tuple[str, ClientError]] = []
    for index, info in enumerate(mine, 1):
        label = _printable(info.name or str(info.id))
        done = kept = failed = 0
        try:
            numbers = vault.version_numbers(info)
        except ClientError as exc:
            numbers = ()
            failed += 1
            failures.append((f"{label} (listing its versions)", exc))
        for number in numbers:
            try:
                if vault.rewrap(info, number, current):
                    done += 1
                else:
                    kept += 1
            except KeyBackendError as exc:
                failed += 1
                failure = backend_failure(exc, "rewrap")
                failures.append((f"{label} version {number}", failure))
            except ClientError as exc:
                failed += 1
                failures.append((f"{label} version {number}", exc))
        rewrapped += done
        unchanged += kept
        tail = f", {failed} failed" if failed else ""
        _say(f"[{index}/{len(mine)}] {label}: {done} rewrapped, {kept} already current{tail}")
    if hidden:
        _say(f"({hidden} client-side object(s) stored under other keys were not touched)")
    tail = f"; {len(failures)} failed" if failures else ""
    print(
        f"Rewrapped {rewrapped} version(s) of {len(mine)} object(s), "
        f"{unchanged} already current{tail}"
    )
    if failures:
        _say(f"cvault: error: {len(failures)} version(s) could not be rewrapped:")
        for what, error in failures:
            _say(f"  {what}: {error}")
        _say("cvault: until they are rewrapped, do not deactivate or destroy older key versions")
        _say(_UNFINISHED)
        codes = {error.exit_code for _, error in failures}
        return codes.pop() if len(codes) == 1 else 1
    for role, ref in current.items():
        older = vault.keys.older_active_versions(role, ref)
        if older:
            listed = ", ".join(str(n) for n in older)
            print(
                f"Every stored version is wrapped under {role} key version {ref.version}: "
                f"version(s) {listed} of {ref.key_id} can now be deactivated in its backend "
                "(cvault does not do it for you; see docs/cli.md)"
            )
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    """Show the configured keys (backend, id, primary version); never secrets."""
    keys = KeyRing.load(cfg.config_dir())
    try:
        if not keys.configured:
            print("No key configured; run 'cvault key init --backend local'")
            return 0
        for role, spec, version in keys.describe():
            print(f"{role}: {spec.kind} {spec.key_id} (primary version {version})")
    finally:
        keys.close()
    return 0


# -- objects -------------------------------------------------------------------------------------


def _mode_filter(args: argparse.Namespace) -> bool | None:
    if getattr(args, "gateway", False):
        return True
    if getattr(args, "client", False):
        return False
    return None


def _resolve(vault: Vault, args: argparse.Namespace) -> ObjectInfo:
    if args.id is not None:
        return vault.get_info(args.id)
    if not args.name:
        raise ConfigurationError("name an object (or give --id)")
    return vault.find(args.name, gateway=_mode_filter(args))


def cmd_put(args: argparse.Namespace, vault: Vault) -> int:
    """Upload FILE as NAME (client-side encrypted unless --gateway); large files resumably."""
    path = Path(args.file)
    name = args.name or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ClientError(f"cannot read {path} ({exc.strerror})") from exc
    progress = Progress(name, size)
    version = vault.put_file(
        path,
        name,
        gateway=args.gateway,
        content_type=args.content_type,
        progress=progress,
        notify=lambda message: print(f"cvault: {message}", file=sys.stderr),
    )
    progress.finish()
    mode = "gateway" if args.gateway else "client-side encrypted"
    number = version.get("number")
    print(f"Stored {_printable(name)} version {number} ({mode}, {version.get('size')} bytes)")
    return 0


def _output_path(args: argparse.Namespace, info: ObjectInfo) -> Path:
    base = (info.name or str(info.id)).rstrip("/").rsplit("/", 1)[-1]
    if args.output:
        target = Path(args.output)
        if target.is_dir():
            target = target / base
        return target
    if base in ("", ".", ".."):
        raise ConfigurationError("cannot derive a file name from the object name: use -o FILE")
    return Path(base)


def cmd_get(args: argparse.Namespace, vault: Vault) -> int:
    """Download NAME to a file; written only once all of it authenticated."""
    info = _resolve(vault, args)
    target = _output_path(args, info)
    progress = Progress(info.name or str(info.id), info.size)
    try:
        written = vault.get_file(info, target, version=args.version, progress=progress)
    except ClientError as exc:
        progress.finish()
        _say(f"cvault: error: {exc}; nothing written")
        return exc.exit_code
    progress.finish()
    _say(f"Wrote {written} bytes to {target}")
    return 0


def cmd_cat(args: argparse.Namespace, vault: Vault) -> int:
    """Stream NAME's plaintext to stdout, segment by authenticated segment."""
    info = _resolve(vault, args)
    out = sys.stdout.buffer

    class _Flushing:
        def write(self, data: bytes) -> int:
            out.write(data)
            out.flush()
            return len(data)

    try:
        vault.download(info, _Flushing(), version=args.version)
    except DecryptionFailed as exc:
        raise DecryptionFailed(f"{exc}; the output is incomplete and must not be used") from exc
    return 0


def cmd_ls(args: argparse.Namespace, vault: Vault) -> int:
    """List objects whose (real) name starts with PREFIX."""
    objects, hidden = vault.list(args.prefix or "")
    for info in objects:
        name = _printable(info.name or "")
        if args.long:
            size = "-" if info.size is None else str(info.size)
            version = "-" if info.version is None else str(info.version)
            print(f"{info.mode:<7} {size:>14} v{version:<4} {info.created_at[:19]}  {name}")
        else:
            print(name)
    if hidden:
        _say(f"({hidden} client-side object(s) stored under other keys are not shown)")
    return 0


def cmd_rm(args: argparse.Namespace, vault: Vault) -> int:
    """Delete NAME."""
    info = _resolve(vault, args)
    vault.remove(info)
    print(f"Deleted {_printable(info.name or str(info.id))}")
    return 0


# -- audit log: trust and offline verification ---------------------------------------------------


def cmd_trust_save(args: argparse.Namespace, vault: Vault) -> int:
    """Save the audit log's keys (trust on first use), or move its saved checkpoint forward."""
    directory = cfg.ensure_dir(cfg.config_dir())
    saved = audit.trust_save(vault.api, directory, replace_keys=args.replace_keys)
    log = saved.log
    origin = _printable(log.origin)
    size = log.checkpoint.size
    if saved.keys_replaced:
        _say(f"cvault: WARNING: the trusted keys of {origin} were REPLACED by the server's keys.")
        _say("cvault: WARNING: trust them only after comparing them out of band; before, were:")
        for key in saved.previous_keys:
            _say(f"  {_printable(key.vkey)}")
    if saved.first_use:
        print(f"Trusting the audit log {origin} on first use, at size {size}.")
        print("Compare these keys with the ones your administrator published, out of band:")
        for key in log.keys:
            print(f"  {_printable(key.vkey)}")
    if saved.previous_size == size:
        print(f"The audit log {origin} is unchanged at size {size}.")
    elif saved.previous_size is not None:
        print(
            f"The audit log {origin} grew from size {saved.previous_size} to {size}: "
            "the new checkpoint extends the saved one."
        )
    print(f"Saved in {saved.path}")
    _trust_save_report_ca(vault, directory, replace=args.replace_keys)
    return 0


def _trust_save_report_ca(vault: Vault, directory: Path, *, replace: bool) -> None:
    """The report CA part of ``trust save``: trust on first use, refuse another unless told."""
    ca = packs.report_ca_save(vault.api, directory, replace=replace)
    if ca is None:
        _say(
            "cvault: note: the server has no report CA (GET /api/v1/compliance/ca/ answered "
            "404: an older server); evidence packs cannot be anchored until it has one."
        )
        return
    subject = _printable(ca.subject)
    if ca.replaced:
        _say(f"cvault: WARNING: the trusted report CA was REPLACED by the server's ({subject}).")
        _say("cvault: WARNING: trust it only after comparing it out of band; before, it was:")
        _say(f"  SHA-256 {ca.previous_fingerprint}")
    if ca.unchanged:
        print(f"The report CA {subject} is unchanged (SHA-256 {ca.fingerprint}).")
        return
    print(f"Trusting the report CA {subject} on first use.")
    print("Compare its SHA-256 fingerprint with the one your administrator published:")
    print(f"  {ca.fingerprint}")
    print(f"Saved in {ca.path}")


def _verdict(report: BundleReport, saved: audit.TrustedLog | None) -> str:
    count = report.leaves_checked
    indices = f" (indices {report.first_index}..{report.last_index})" if count else ""
    if saved is not None:
        when = f" on {saved.saved_at}" if saved.saved_at else ""
        anchor = f"anchored to the checkpoint saved{when} (size {report.saved_size})"
    else:
        anchor = "not anchored to a saved checkpoint (run 'cvault trust save' to detect rollbacks)"
    return (
        f"verified: {_printable(report.origin)}, {count} event(s){indices}, "
        f"{report.checkpoint_count} checkpoint(s), last size {report.last_size}, {anchor}"
    )


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify an audit export bundle offline; print one verdict line.

    Exit status: 0 verified, 1 failed, 2 unanchored (no trusted key).
    """
    try:
        data = audit.read_bundle(args.file)
        verdict = audit.audit_verify(data, directory=cfg.config_dir(), trust=args.trust)
    except AuditUnanchored as exc:
        print(f"UNANCHORED: {_printable(str(exc))}")
        if exc.signing_keys:
            _say("The bundle names these keys (unverified; compare them out of band):")
            for vkey in exc.signing_keys:
                _say(f"  {_printable(vkey)}")
        _say("Then run 'cvault trust save' against the server, or pass --trust KEY.")
        return exc.exit_code
    except AuditCheckFailed as exc:
        print(f"FAILED: {_printable(str(exc))} [{exc.code}]")
        return exc.exit_code
    print(_verdict(verdict.report, verdict.saved))
    return 0


# -- compliance evidence packs: offline verification ---------------------------------------------

#: The most problems ``report verify`` prints (a pack with every file changed has thousands).
MAX_PROBLEMS_SHOWN = 50


def _pack_verdict(verdict: packs.ReportVerdict) -> str:
    facts = verdict.report
    audit_part = ""
    if facts.audit_origin is not None:
        keys = (
            "signed by the audit keys saved for it"
            if facts.audit_keys_saved
            else "signed by the keys the manifest vouches for (no audit keys saved for it)"
        )
        audit_part = (
            f"; audit log {_printable(facts.audit_origin)} from size {facts.audit_start_size} to "
            f"{facts.audit_end_size}, {keys}, {facts.anchors} anchor event(s) proved in"
        )
    return (
        f"verified: evidence pack of tenant {_printable(facts.tenant)}, run {facts.run}, "
        f"created {facts.created_at}: {facts.files} file(s), manifest signed by "
        f"{_printable(facts.signer_subject)}, issued by the trusted report CA "
        f"{_printable(facts.ca_subject)} (SHA-256 {facts.ca_fingerprint}){audit_part}"
    )


def cmd_report_verify(args: argparse.Namespace) -> int:
    """Verify a compliance evidence pack offline; print a verdict and every problem.

    Exit status: 0 verified, 1 failed, 2 unanchored (no CA certificate trusted).
    """
    try:
        data = packs.read_pack(args.pack)
        verdict = packs.report_verify(data, directory=cfg.config_dir(), trust=args.trust)
    except ReportUnanchored as exc:
        print(f"UNANCHORED: {_printable(str(exc))}")
        if exc.pack_ca_fingerprint:
            _say("The pack's CA certificate has this SHA-256 (unverified; compare it out of band):")
            _say(f"  {exc.pack_ca_fingerprint}")
        _say("Then run 'cvault trust save' against the server, or pass --trust CERT.")
        return exc.exit_code
    except ReportCheckFailed as exc:
        print(f"FAILED: {_printable(str(exc))} [{exc.code}]")
        for problem in exc.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"  - {_printable(problem)}")
        if len(exc.problems) > MAX_PROBLEMS_SHOWN:
            print(f"  ... and {len(exc.problems) - MAX_PROBLEMS_SHOWN} more")
        return exc.exit_code
    print(_pack_verdict(verdict))
    return 0


# -- argument parsing ----------------------------------------------------------------------------


def _add_target(parser: argparse.ArgumentParser, *, version: bool = True) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="the object's name")
    parser.add_argument("--id", type=int, help="address the object by its server id instead")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--gateway", action="store_true", help="only gateway-mode objects")
    mode.add_argument("--client", action="store_true", help="only client-side objects")
    if version:
        parser.add_argument("--version", type=int, help="a version number (default: the latest)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cvault``."""
    parser = argparse.ArgumentParser(
        prog="cvault",
        description="Ciphervault client: files are encrypted on this machine with your own key.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser("login", help="save the server URL and API token")
    login.add_argument("--url", required=True, help="the server, e.g. https://vault.example")
    token = login.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the API token (cvt_...)")
    token.add_argument("--token-stdin", action="store_true", help="read the token from stdin")
    login.add_argument("--ca-file", help="a CA bundle to verify the server's certificate")
    login.add_argument("--no-check", action="store_true", help="save without asking the server")
    login.set_defaults(handler=cmd_login, needs_vault=False)

    logout = commands.add_parser("logout", help="forget the saved URL and token")
    logout.set_defaults(handler=cmd_logout, needs_vault=False)

    key = commands.add_parser("key", help="manage your own encryption keys")
    key_commands = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    init = key_commands.add_parser("init", help="create your key in a key backend")
    init.add_argument("--backend", required=True, choices=["local", "pkcs11", "tpm", "kmip"])
    init.add_argument("--recovery", action="store_true", help="add a second (recovery) key")
    group = init.add_argument_group("local")
    group.add_argument("--keystore", help="keystore file (default: in the config directory)")
    group.add_argument("--passphrase-file", help="derive the keystore key from this passphrase")
    group.add_argument("--key-file", help="local: master key file; kmip: client private key")
    group = init.add_argument_group("pkcs11")
    group.add_argument("--module", help="the PKCS#11 module (.so)")
    group.add_argument("--token-label", help="the token's label")
    group.add_argument("--pin-file", help="a file holding the user PIN (the PIN is never stored)")
    group = init.add_argument_group("tpm")
    group.add_argument("--tcti", help="e.g. device:/dev/tpmrm0, tabrmd:, swtpm:port=2321")
    group.add_argument("--state-dir", help="where key blobs live (default: in the config dir)")
    group = init.add_argument_group("kmip")
    group.add_argument("--host")
    group.add_argument("--port", type=int, default=5696)
    group.add_argument("--ca-file")
    group.add_argument("--cert-file")
    group.add_argument("--key-password-file")
    group.add_argument("--server-name")
    init.set_defaults(handler=cmd_key_init, needs_vault=False)
    rotate = key_commands.add_parser("rotate", help="rotate your key to a new version")
    rotate.add_argument("--recovery", action="store_true", help="rotate the recovery key")
    stored = rotate.add_mutually_exclusive_group()
    stored.add_argument(
        "--no-rewrap",
        "--no-scan",
        dest="no_rewrap",
        action="store_true",
        help="only rotate: leave stored objects under the older version",
    )
    stored.add_argument(
        "--rewrap-only",
        action="store_true",
        help="make no new version: rewrap what is not under the current versions yet",
    )
    rotate.set_defaults(handler=cmd_key_rotate, needs_vault=False)
    show = key_commands.add_parser("show", help="show the configured keys")
    show.set_defaults(handler=cmd_key_show, needs_vault=False)

    trust = commands.add_parser("trust", help="trust your tenant's audit log and the report CA")
    trust_commands = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    save = trust_commands.add_parser(
        "save",
        help="save the audit log's keys and latest checkpoint (or move it forward) and the "
        "report CA certificate",
    )
    save.add_argument(
        "--replace-keys",
        action="store_true",
        help="trust the server's current keys and report CA instead of the saved ones (check "
        "them first)",
    )
    save.set_defaults(handler=cmd_trust_save, needs_vault=True)

    audit_parser = commands.add_parser("audit", help="check audit log exports offline")
    audit_commands = audit_parser.add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    verify = audit_commands.add_parser("verify", help="verify an export bundle offline")
    verify.add_argument("file", metavar="FILE", help="the bundle ('-' reads standard input)")
    verify.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="KEY",
        help="also trust this key: a verifier key (name+id+base64) or a PEM public key file",
    )
    verify.set_defaults(handler=cmd_audit_verify, needs_vault=False)

    report_parser = commands.add_parser("report", help="check compliance evidence packs offline")
    report_commands = report_parser.add_subparsers(
        dest="report_command", required=True, metavar="ACTION"
    )
    pack_verify = report_commands.add_parser("verify", help="verify an evidence pack offline")
    pack_verify.add_argument("pack", metavar="PACK", help="the pack (.zip; '-' reads stdin)")
    pack_verify.add_argument(
        "--trust",
        metavar="CERT",
        help="trust this report CA certificate (PEM file) instead of the saved one",
    )
    pack_verify.set_defaults(handler=cmd_report_verify, needs_vault=False)

    put = commands.add_parser("put", help="upload a file")
    put.add_argument("file", metavar="FILE")
    put.add_argument("name", nargs="?", metavar="NAME", help="default: the file's name")
    put.add_argument("--gateway", action="store_true", help="let the server encrypt")
    put.add_argument("--content-type", help="gateway mode only")
    put.set_defaults(handler=cmd_put, needs_vault=True)

    get = commands.add_parser("get", help="download an object to a file")
    _add_target(get)
    get.add_argument("-o", "--output", metavar="FILE", help="default: the name's last part")
    get.set_defaults(handler=cmd_get, needs_vault=True)

    cat = commands.add_parser("cat", help="write an object to stdout")
    _add_target(cat)
    cat.set_defaults(handler=cmd_cat, needs_vault=True)

    ls = commands.add_parser("ls", help="list objects")
    ls.add_argument("prefix", nargs="?", metavar="PREFIX")
    ls.add_argument("-l", "--long", action="store_true", help="mode, size, version, date")
    ls.set_defaults(handler=cmd_ls, needs_vault=True)

    rm = commands.add_parser("rm", help="delete an object")
    _add_target(rm, version=False)
    rm.set_defaults(handler=cmd_rm, needs_vault=True)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Run one ``cvault`` command.

    Returns:
        The exit status: 0, or the failing error's ``exit_code``.
    """
    args = build_parser().parse_args(argv)
    handler: Callable[..., int] = args.handler
    try:
        if not args.needs_vault:
            return handler(args)
        vault = Vault.from_config()
        try:
            return handler(args, vault)
        finally:
            vault.close()
    except ClientError as exc:
        _say(f"cvault: error: {exc}")
        return exc.exit_code
    except KeyBackendError as exc:
        failure = backend_failure(exc, "complete the operation")
        _say(f"cvault: error: {failure}")
        return failure.exit_code
    except EnvelopeError as exc:
        _say(f"cvault: error: authentication failed: {exc}")
        return DecryptionFailed.exit_code
    except KeyboardInterrupt:
        _say("cvault: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``cvault cat x | head``): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def main() -> None:
    """The ``cvault`` entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()

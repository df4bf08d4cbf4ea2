"""Fuzzing the evidence pack verifier (``vault.crypto.reportpack``, ``docs/compliance.md``).

Inputs: wholly random bytes and random ZIPs, and a real evidence pack (a real report CA and
signer, a real audit log with signed checkpoints and the run's anchor event, written by
``build_pack`` as ``tests/crypto/test_reportpack.py`` makes it) edited:

- ZIP record by record: every field of every local header, central directory entry and the end
  record (signatures, flags, methods, CRCs, sizes, name lengths, offsets, counts) set to
  boundary values, dropped, duplicated, swapped; names and data edited; plus blind byte edits
  biased towards those fields;
- member by member, rewritten as a ZIP (``raw_zip``): members dropped, duplicated, reordered,
  renamed (case, ``..``, absolute, backslash, non-ASCII, directory), stored instead of deflated,
  flags, CRCs and sizes changed, data hidden after a member, a prefix, a suffix, a comment;
- by the holder of the report-signing key: a member's content edited (JSON edits of
  ``audit/proofs.json`` and ``reports/report.json``, byte edits of the rest) and the pack
  re-signed with ``build_pack``, or ``manifest.json`` edited as JSON and re-signed.

What every test proves, for every input:

- ``verify_pack`` returns a report or raises exactly one of its documented errors
  (``PackFormatError``, ``PackTooLarge``, ``PackNameError``, ``PackManifestError``; and
  ``InvalidPackParameters`` only for a trusted CA certificate that is not one PEM certificate);
  never ``zipfile.BadZipFile``, ``zlib.error``, ``struct.error``, ``KeyError``, ``IndexError``,
  ``UnicodeDecodeError``, ``RecursionError`` or an undocumented ``ValueError``;
- a pack that verifies holds exactly the genuine members, as ``zipfile`` (what ``unzip``
  sees) extracts them, and names the genuine tenant and run;
- even re-signed by the signer's key, a pack verifies only with the genuine evidence, the
  genuine results and findings digests and integrity statement in ``reports/report.json``,
  and the genuine anchor events (the audit log vouches for them, not the signer).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import event, given, note
from hypothesis import strategies as st

from tests.crypto.test_reportpack import (
    RUN,
    TENANT,
    Audit,
    Pki,
    Raw,
    make_pack,
    members,
    new_audit,
    new_pki,
    pack_files,
    raw_zip,
)
from tests.fuzz.mutations import (
    Field,
    byte_mutation,
    json_mutated,
    mutated,
    only_documented,
    sized,
)
from vault.crypto.canonical import canonical_json
from vault.crypto.checkpoint import CheckpointKey
from vault.crypto.reportpack import (
    MANIFEST_PATH,
    PROOFS_PATH,
    REPORT_PATH,
    SIGNATURE_PATH,
    InvalidPackParameters,
    PackFormatError,
    PackManifestError,
    PackNameError,
    PackReport,
    PackTooLarge,
    report_digests,
    verify_pack,
)

pytestmark: list[pytest.MarkDecorator] = []

#: verify_pack's documented errors (its docstring, docs/compliance.md).
VERIFY_ERRORS: tuple[type[BaseException], ...] = (
    PackFormatError,
    PackTooLarge,
    PackNameError,
    PackManifestError,
)


@dataclass(frozen=True)
class World:
    pki: Pki
    audit: Audit
    pack: bytes
    members: dict[str, bytes]
    fields: tuple[Field, ...]
    report: PackReport

    def trust(self, origin: str) -> list[CheckpointKey] | None:
        return [self.audit.key] if origin == self.audit.log.origin else None


def zip_fields(data: bytes) -> tuple[Field, ...]:
    """A ZIP (as ``build_pack`` writes it: no extra fields, no comments) as its record fields
    (APPNOTE.TXT 4.3), little-endian integers."""
    fields: list[Field] = []

    def ints(prefix: str, layout: list[tuple[str, int]], at: int) -> int:
        for name, width in layout:
            fields.append(Field(f"{prefix} {name}", data[at : at + width], width, "little"))
            at += width
        return at

    local = [
        ("signature", 4), ("version", 2), ("flags", 2), ("method", 2), ("time", 2),
        ("date", 2), ("crc", 4), ("csize", 4), ("size", 4), ("name length", 2),
        ("extra length", 2),
    ]  # fmt: skip
    central = [
        ("signature", 4), ("made by", 2), ("needs", 2), ("flags", 2), ("method", 2),
        ("time", 2), ("date", 2), ("crc", 4), ("csize", 4), ("size", 4), ("name length", 2),
        ("extra length", 2), ("comment length", 2), ("disk", 2), ("internal", 2),
        ("external", 4), ("offset", 4),
    ]  # fmt: skip
    end = [
        ("signature", 4), ("disk", 2), ("cd disk", 2), ("on disk", 2), ("total", 2),
        ("cd size", 4), ("cd offset", 4), ("comment length", 2),
    ]  # fmt: skip
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    at = 0
    for info in infos:
        assert at == info.header_offset
        assert not info.extra
        assert not info.comment
        at = ints(f"local {info.filename}", local, at)
        name_len = len(info.filename.encode())
        fields.append(Field(f"local {info.filename} name", data[at : at + name_len]))
        at += name_len
        fields.append(Field(f"data {info.filename}", data[at : at + info.compress_size]))
        at += info.compress_size
    for info in infos:
        at = ints(f"central {info.filename}", central, at)
        name_len = len(info.filename.encode())
        fields.append(Field(f"central {info.filename} name", data[at : at + name_len]))
        at += name_len
    at = ints("end", end, at)
    assert at == len(data)
    assert b"".join(f.data for f in fields) == data
    return tuple(fields)


@pytest.fixture(scope="module")
def world() -> World:
    pki, audit = new_pki(), new_audit()
    pack = make_pack(pki, audit)
    world = World(pki, audit, pack, members(pack), zip_fields(pack), _placeholder())
    report = verify_pack(pack, trusted_ca_pem=pki.ca_pem, audit_trust=world.trust)
    assert report.verified
    return replace(world, report=report)


def _placeholder() -> PackReport:
    return PackReport(
        anchored=False, problems=["not verified yet"], tenant="", run="", created_at="", files=0
    )


def _verify(
    data: bytes, world: World, *, anchored: bool = True
) -> tuple[object, BaseException | None]:
    return only_documented(
        lambda: verify_pack(
            data,
            trusted_ca_pem=world.pki.ca_pem if anchored else None,
            audit_trust=world.trust,
        ),
        VERIFY_ERRORS,
    )


def _assert_genuine_members(report: object, data: bytes, world: World) -> None:
    """A pack with no problem holds exactly the genuine members, as unzip would extract them."""
    assert isinstance(report, PackReport)
    if not report.ok:
        event("problems reported")
        return
    assert members(data) == world.members
    assert (report.tenant, report.run) == (TENANT, RUN)
    assert report.anchor_events == world.report.anchor_events
    if data != world.pack:
        event("verified: an edit of ZIP metadata only (times, attributes, order)")


# --------------------------------------------------------------------------------------------
# Wholly random input


def _random_zip(entries: list[tuple[str, bytes, bool]]) -> bytes:
    output = io.BytesIO()
    with zipfile.ZipFile(output, "w") as archive:
        for name, content, deflate in entries:
            method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            archive.writestr(name, content, compress_type=method)
    return output.getvalue()


_NAMES = st.sampled_from(
    [
        MANIFEST_PATH,
        SIGNATURE_PATH,
        PROOFS_PATH,
        REPORT_PATH,
        "a",
        "A",
        "a/b",
        "../x",
        "/abs",
        "x\\y",
        "d/",
        "é",
    ]
) | st.text(min_size=1, max_size=12).filter(
    lambda n: n.split("\x00")[0] != ""  # zipfile cuts a name at NUL and cannot write ""
)
_CONTENT = (
    st.binary(max_size=200)
    | st.sampled_from([b"{}", b"[]", b'{"format":"ciphervault-evidence-pack/1"}', b"null"])
    | st.integers(1000, 5000).map(lambda depth: b"[" * depth)
)


def _random_packs() -> st.SearchStrategy[bytes]:
    entries = st.lists(
        st.tuples(_NAMES, _CONTENT, st.booleans()), max_size=5, unique_by=lambda e: e[0]
    )
    return st.one_of(
        st.binary(max_size=600),
        entries.map(_random_zip),
        st.binary(max_size=200).map(lambda b: b + b"PK\x05\x06" + bytes(18)),
    )


@sized(ci=120, torture=1000)
@given(data=_random_packs(), anchored=st.booleans())
def test_it_refuses_random_input_with_a_documented_error(
    world: World, data: bytes, anchored: bool
) -> None:
    report, error = _verify(data, world, anchored=anchored)
    if error is None:
        assert isinstance(report, PackReport)
        assert not report.ok


@sized(ci=50, torture=300)
@given(
    pem=st.binary(max_size=300)
    | st.just(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
)
def test_it_refuses_a_trusted_ca_that_is_not_a_certificate_with_a_documented_error(
    world: World, pem: bytes
) -> None:
    _, error = only_documented(
        lambda: verify_pack(world.pack, trusted_ca_pem=pem), (InvalidPackParameters,)
    )
    assert error is not None


# --------------------------------------------------------------------------------------------
# The real pack, edited record by record and byte by byte


@sized(ci=200, torture=1500)
@given(data=st.data())
def test_a_pack_edited_record_by_record_verifies_only_with_the_genuine_members(
    world: World, data: st.DataObject
) -> None:
    pack, steps = data.draw(mutated(world.fields), label="mutation")
    note(f"mutation: {steps}")
    report, _ = _verify(pack, world)
    if report is not None:
        _assert_genuine_members(report, pack, world)


# --------------------------------------------------------------------------------------------
# Member by member


def _rename(draw: st.DrawFn, name: str) -> str:
    return draw(
        st.sampled_from(
            [
                name.upper(),
                "../" + name,
                "/" + name,
                name.replace("/", "\\"),
                name + "/",
                name + "é",
                "./" + name,
                name.replace("/", "//"),
                "x/" + name,
                name.split("/")[0],
                "",
            ]
        )
    )


@st.composite
def member_edit(draw: st.DrawFn, world: World) -> bytes:
    entries = [Raw(name, data) for name, data in world.members.items()]
    prefix = suffix = comment = b""
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                [
                    "drop",
                    "dup",
                    "swap",
                    "rename",
                    "cdname",
                    "stored",
                    "flags",
                    "crc",
                    "size",
                    "after",
                    "hidden",
                    "corrupt",
                    "offset",
                    "prefix",
                    "suffix",
                    "comment",
                ]
            )
        )
        event(f"member:{op}")
        at = draw(st.integers(0, len(entries) - 1)) if entries else 0
        if not entries and op not in ("prefix", "suffix", "comment"):
            continue
        if op == "drop":
            del entries[at]
        elif op == "dup":
            entries.insert(draw(st.integers(0, len(entries))), entries[at])
        elif op == "swap":
            other = draw(st.integers(0, len(entries) - 1))
            entries[at], entries[other] = entries[other], entries[at]
        elif op == "rename":
            entries[at] = replace(entries[at], name=_rename(draw, entries[at].name))
        elif op == "cdname":
            entries[at] = replace(entries[at], cd_name=_rename(draw, entries[at].name))
        elif op == "stored":
            entries[at] = replace(entries[at], method=0)
        elif op == "flags":
            flags = draw(st.sampled_from([0x1, 0x8, 0x40, 0x800, 0x2, 0x6, 0x2000, 0xFFFF]))
            entries[at] = replace(entries[at], flags=flags)
        elif op == "crc":
            entries[at] = replace(entries[at], crc=draw(st.integers(0, 2**32 - 1)))
        elif op == "size":
            size = len(entries[at].data) + draw(
                st.sampled_from([-1, 1, 2**20, -len(entries[at].data)])
            )
            entries[at] = replace(entries[at], size=min(2**32 - 1, max(0, size)))
        elif op == "after":
            entries[at] = replace(entries[at], after=draw(st.binary(min_size=1, max_size=32)))
        elif op == "hidden":
            entries[at] = replace(entries[at], in_directory=False)
        elif op == "corrupt":
            blob = draw(st.binary(max_size=64))
            entries[at] = replace(entries[at], compressed=blob)
        elif op == "offset":
            entries[at] = replace(entries[at], offset=draw(st.integers(0, 2**32 - 1)))
        elif op == "prefix":
            prefix = draw(st.binary(min_size=1, max_size=32))
        elif op == "suffix":
            suffix = draw(st.binary(min_size=1, max_size=32))
        else:
            comment = draw(st.binary(min_size=1, max_size=32))
    return raw_zip(entries, prefix=prefix, suffix=suffix, comment=comment)


@sized(ci=120, torture=1000)
@given(data=st.data())
def test_a_pack_edited_member_by_member_verifies_only_with_the_genuine_members(
    world: World, data: st.DataObject
) -> None:
    pack = data.draw(member_edit(world), label="pack")
    report, _ = _verify(pack, world)
    if report is not None:
        _assert_genuine_members(report, pack, world)


# --------------------------------------------------------------------------------------------
# Re-signed by the holder of the report-signing key


def _genuine_digests(world: World) -> tuple[tuple[str, str], Any]:
    report = json.loads(world.members[REPORT_PATH])
    return report_digests(report), report["integrity"]


def _assert_log_vouched(report: object, data: bytes, world: World) -> None:
    """A re-signed pack verifies only with what the audit log vouches for."""
    assert isinstance(report, PackReport)
    if not report.verified:
        return
    content = members(data)
    evidence = {n for n in content if n.startswith("evidence/")}
    assert evidence == {n for n in world.members if n.startswith("evidence/")}
    document = json.loads(content[REPORT_PATH])
    # The log vouches for the digests and the integrity outcome (ok, leaves), nothing else.
    integrity = document["integrity"]
    genuine_digests, genuine_integrity = _genuine_digests(world)
    assert report_digests(document) == genuine_digests
    assert (integrity["audit_verified"], integrity["leaves"]) == (
        genuine_integrity["audit_verified"],
        genuine_integrity["leaves"],
    )
    assert report.anchor_events == world.report.anchor_events
    assert (report.tenant, report.run) == (TENANT, RUN)
    if data != world.pack:
        event("verified re-signed: only what the log does not vouch for differs")


@sized(ci=120, torture=800)
@given(data=st.data())
def test_a_re_signed_pack_with_edited_content_verifies_only_with_what_the_log_vouches_for(
    world: World, data: st.DataObject
) -> None:
    files = pack_files(world.audit)
    path = data.draw(st.sampled_from(sorted(files)), label="path")
    content = files[path]
    if path.endswith(".json"):
        edited, steps = data.draw(
            json_mutated(json.loads(content), styles=("canonical", "canonical", "compact")),
            label="edit",
        )
    else:
        edited, what = data.draw(byte_mutation(content), label="edit")
        steps = [what]
    note(f"{path}: {steps}")
    pack = make_pack(world.pki, world.audit, {**files, path: edited})
    report, _ = _verify(pack, world)
    _assert_log_vouched(report, pack, world)


def _resigned_manifest(world: World, manifest: bytes) -> bytes:
    signature = world.pki.signer_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    content = dict(world.members)
    content[MANIFEST_PATH] = manifest
    content[SIGNATURE_PATH] = base64.b64encode(signature) + b"\n"
    return raw_zip([Raw(name, data) for name, data in content.items()])


@sized(ci=120, torture=800)
@given(data=st.data())
def test_a_re_signed_edited_manifest_verifies_only_with_the_genuine_members(
    world: World, data: st.DataObject
) -> None:
    document = json.loads(world.members[MANIFEST_PATH])
    manifest, steps = data.draw(
        json_mutated(document, styles=("canonical", "canonical", "compact")), label="edit"
    )
    note(f"{steps}: {manifest[:1500]!r}")
    pack = _resigned_manifest(world, manifest)
    report, _ = _verify(pack, world)
    assert isinstance(report, PackReport | None)
    if isinstance(report, PackReport) and report.verified:
        content = members(pack)
        for name in (MANIFEST_PATH, SIGNATURE_PATH):
            content.pop(name)
        genuine = {
            k: v for k, v in world.members.items() if k not in (MANIFEST_PATH, SIGNATURE_PATH)
        }
        assert content == genuine
        assert (report.tenant, report.run) == (TENANT, RUN)
        event("verified re-signed manifest")


def test_the_genuine_pack_verifies(world: World) -> None:
    """The fuzzed pack is a good one, so that edits are measured against a verified start."""
    assert world.report.verified
    assert world.report.anchor_events
    assert canonical_json(json.loads(world.members[MANIFEST_PATH])) == world.members[MANIFEST_PATH]
    assert struct.unpack("<I", world.pack[-22:-18])[0] == 0x06054B50


# --------------------------------------------------------------------------------------------
# Regressions: what the fuzzer found (fixed in vault/crypto/reportpack.py)


def _with_field(world: World, name: str, value: int) -> bytes:
    fields = [
        Field(f.name, value.to_bytes(f.width, f.order), f.width, f.order) if f.name == name else f
        for f in world.fields
    ]
    assert [f.name for f in fields].count(name) == 1
    return b"".join(f.data for f in fields)


@pytest.mark.parametrize("record", ["central", "local"])
def test_it_refuses_a_member_claiming_to_need_a_newer_zip_version(
    world: World, record: str
) -> None:
    """Found by the record fuzzer: "version needed" 8.4 verified, but zipfile (and unzip)
    refuse to extract such a member, so what was verified was not what unzip gives."""
    name = f"{record} VERIFY.md {'needs' if record == 'central' else 'version'}"
    pack = _with_field(world, name, 84)
    with pytest.raises(PackFormatError, match=r"version above 2\.0") as caught:
        verify_pack(pack, trusted_ca_pem=world.pki.ca_pem)
    assert type(caught.value) is PackFormatError


def test_it_refuses_a_malformed_extra_field(world: World) -> None:
    """An extra field zipfile cannot parse (here: a record longer than the field)."""
    content = dict(world.members)
    entries = [Raw(name, data) for name, data in content.items()]
    pack = bytearray(raw_zip(entries))
    # Give the last central entry a 4-byte extra field claiming 9 bytes, taken from the
    # comment-free end of the directory: rebuild with a declared extra instead.
    end = len(pack) - 22
    cd_size, cd_offset = struct.unpack_from("<II", pack, end + 12)
    last = pack.rfind(b"PK\x01\x02", cd_offset, end)
    name_len = struct.unpack_from("<H", pack, last + 28)[0]
    struct.pack_into("<H", pack, last + 30, 4)  # extra length 4
    pack[last + 46 + name_len : last + 46 + name_len] = struct.pack("<HH", 0x5455, 9)
    struct.pack_into("<II", pack, end + 4 + 12, cd_size + 4, cd_offset)
    with pytest.raises(zipfile.BadZipFile):
        members(bytes(pack))
    with pytest.raises(PackFormatError, match="extra field") as caught:
        verify_pack(bytes(pack), trusted_ca_pem=world.pki.ca_pem)
    assert type(caught.value) is PackFormatError


@pytest.mark.parametrize(
    ("integrity", "problem"),
    [
        (None, "cannot be read as a report"),
        ([], "cannot be read as a report"),
        ({"audit_verified": 1, "leaves": 11}, "integrity statement is not the one"),
    ],
)
def test_it_reports_a_re_signed_report_with_a_bad_integrity_statement(
    world: World, integrity: object, problem: str
) -> None:
    """Found by the re-signed content fuzzer: ``integrity: null`` in reports/report.json raised
    AttributeError out of verify_pack; and ``1`` passed for ``true`` (Python's 1 == True)."""
    files = pack_files(world.audit)
    document = json.loads(files[REPORT_PATH])
    document["integrity"] = integrity
    pack = make_pack(world.pki, world.audit, {**files, REPORT_PATH: canonical_json(document)})
    report = verify_pack(pack, trusted_ca_pem=world.pki.ca_pem, audit_trust=world.trust)
    assert not report.verified
    assert any(problem in p for p in report.problems), report.problems


def test_it_reports_an_anchor_given_twice(world: World) -> None:
    """Found by the re-signed content fuzzer: the same (genuine) anchor listed twice proved
    twice, and the report counted two anchor events for one."""
    files = pack_files(world.audit)
    document = json.loads(files[PROOFS_PATH])
    document["anchors"] = document["anchors"] * 2
    pack = make_pack(world.pki, world.audit, {**files, PROOFS_PATH: canonical_json(document)})
    report = verify_pack(pack, trusted_ca_pem=world.pki.ca_pem, audit_trust=world.trust)
    assert not report.verified
    assert any("repeats another anchor" in p for p in report.problems), report.problems

"""A signed extract of the audit log for one tenant, which a team can attach to its answer to a customer.

The file holds the tenant's records as the exact lines of the log (so each line's sha256 can later be matched
against the operator's log), the verdict on the whole chain at export time with its head, and a signature over
all of it: HMAC-SHA256 with a shared secret, or Ed25519 (needs the `cryptography` package) so that anyone with
the public key can check it without being able to forge one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.errors import AuditLogError, UserInputError
from lifecycle.route.audit import read_log
from lifecycle.route.chain import line_sha256

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

EXPORT_FORMAT = "lifecycle.audit-export.v1"
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class ExportReport:
    """What `verify_export` found: `ok` when the signature holds and every line matches its hash."""

    path: str
    tenant: str
    records: int
    signed_by: str  # "hmac-sha256:<key id>" or "ed25519:<public key fingerprint>"
    chain_ok: bool  # the verdict on the whole log when it was exported (covered by the signature)
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def export(
    path: Path,
    since: datetime | None,
    tenant: str,
    key: bytes | Ed25519PrivateKey,
    *,
    out: Path | None = None,
    now: datetime | None = None,
) -> Path:
    """Write the tenant's records since `since` with the chain's verdict, signed with `key`; returns the file.

    `key` is an HMAC secret (at least 16 bytes) or an Ed25519 private key. A broken chain is exported as such,
    never hidden. The default file is `<log>.<tenant>.export.json` beside the log.
    """
    snapshot = read_log(Path(path))
    lines = [
        {"seq": logged.seq, "sha256": logged.sha256, "line": snapshot.lines[logged.line - 1].decode()}
        for logged in snapshot.records
        if logged.record.tenant == tenant and (since is None or logged.record.received_at >= since)
    ]
    chain = snapshot.chain
    body: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "log": Path(path).name,
        "tenant": tenant,
        "since": since.isoformat() if since else None,
        "exported_at": (now or datetime.now(timezone.utc)).isoformat(),
        "chain": {
            "ok": chain.ok,
            "records": chain.records,
            "head_seq": chain.head.seq if chain.head else None,
            "head_sha256": chain.head.sha256 if chain.head else None,
            "problems": [str(problem) for problem in chain.problems],
        },
        "records": lines,
        "signer": _signer(key),
    }
    document = {**body, "signature": _sign(key, _canonical(body))}
    target = out or Path(path).with_name(f"{Path(path).name}.{_safe(tenant)}.export.json")
    target.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return target


def verify_export(path: Path, key: bytes | Ed25519PublicKey) -> ExportReport:
    """Check an export's signature with the HMAC secret or the signer's Ed25519 public key, and each line."""
    try:
        document = json.loads(Path(path).read_text())
        signature = document.pop("signature")
        signer = document["signer"]
        tenant, records, chain_ok = document["tenant"], document["records"], document["chain"]["ok"]
        if document.get("format") != EXPORT_FORMAT:
            raise ValueError(f"format {document.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditLogError(f"{path}: not an audit export ({exc})") from None
    problems: list[str] = []
    if not _signature_holds(key, signer, _canonical(document), signature):
        problems.append("the signature does not match: the file was changed or signed with another key")
    tenants = set()
    for entry in records:
        if line_sha256(entry["line"].encode()) != entry["sha256"]:
            problems.append(f"seq {entry['seq']}: the line does not match its sha256")
        tenants.add(json.loads(entry["line"]).get("tenant"))
    if tenants - {tenant}:
        problems.append(f"records of other tenants inside: {sorted(map(str, tenants - {tenant}))}")
    return ExportReport(
        path=str(path),
        tenant=tenant,
        records=len(records),
        signed_by=f"{signer.get('alg')}:{signer.get('key_id')}",
        chain_ok=bool(chain_ok),
        problems=tuple(problems),
    )


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "tenant"


def _hmac_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise UserInputError(f"an HMAC signing key needs at least {MIN_KEY_BYTES} bytes; got {len(key)}")
    return key


def _signer(key: bytes | Ed25519PrivateKey) -> dict[str, str]:
    if isinstance(key, bytes):
        # names the key without revealing it: an HMAC of a fixed label
        key_id = hmac.new(_hmac_key(key), b"lifecycle audit export key id", hashlib.sha256).hexdigest()[:16]
        return {"alg": "hmac-sha256", "key_id": key_id}
    public = _raw_public(key.public_key())
    return {"alg": "ed25519", "key_id": hashlib.sha256(public).hexdigest()[:16], "public_key": public.hex()}


def _sign(key: bytes | Ed25519PrivateKey, payload: bytes) -> str:
    if isinstance(key, bytes):
        return hmac.new(_hmac_key(key), payload, hashlib.sha256).hexdigest()
    return key.sign(payload).hex()


def _signature_holds(
    key: bytes | Ed25519PublicKey, signer: dict[str, str], payload: bytes, signature: str
) -> bool:
    if isinstance(key, bytes):
        if signer.get("alg") != "hmac-sha256":
            return False
        return hmac.compare_digest(_sign(key, payload), str(signature))
    from cryptography.exceptions import InvalidSignature

    if signer.get("alg") != "ed25519" or signer.get("public_key") != _raw_public(key).hex():
        return False
    try:
        key.verify(bytes.fromhex(signature), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def _raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

"""A TUF repository made by python-tuf's Metadata API, for custody's client to read (interoperability tests).

Usage: python_repo.py OUT_DIR

Writes OUT_DIR/metadata (consistent snapshots: N.root.json, N.targets.json, N.acme.json, N.snapshot.json,
timestamp.json) and OUT_DIR/targets (dir/HASH.name for each hash). Keys: ed25519 for root and targets, ECDSA P-256
for snapshot, timestamp and the delegated role "acme" (paths "acme/*"). Targets: "readme.txt" in targets and
"acme/fw.bin" in acme; their contents are "readme\n" and "acme firmware 1.0\n". Root is rotated once (version 2,
signed by the old and the new root keys), so that a client walks the root chain.
"""

import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

CONTENTS = {"readme.txt": b"readme\n", "acme/fw.bin": b"acme firmware 1.0\n"}


def main() -> None:
    out = sys.argv[1]
    metadata_dir = os.path.join(out, "metadata")
    targets_dir = os.path.join(out, "targets")
    os.makedirs(metadata_dir, exist_ok=True)
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)

    signers = {
        "root": CryptoSigner.generate_ed25519(),
        "targets": CryptoSigner.generate_ed25519(),
        "snapshot": CryptoSigner.generate_ecdsa(),
        "timestamp": CryptoSigner.generate_ecdsa(),
        "acme": CryptoSigner.generate_ecdsa(),
    }

    root = Metadata(Root(expires=expires, consistent_snapshot=True))
    for role in ["root", "targets", "snapshot", "timestamp"]:
        root.signed.add_key(signers[role].public_key, role)

    targets = Metadata(Targets(expires=expires))
    acme = Metadata(Targets(expires=expires))
    for path, data in CONTENTS.items():
        info = TargetFile.from_data(path, data, ["sha256", "sha512"])
        (acme if path.startswith("acme/") else targets).signed.targets[path] = info
        directory, name = os.path.split(path)
        for digest in info.hashes.values():
            target_file = os.path.join(targets_dir, directory, f"{digest}.{name}")
            os.makedirs(os.path.dirname(target_file), exist_ok=True)
            with open(target_file, "wb") as f:
                f.write(data)
    acme_key = signers["acme"].public_key
    targets.signed.delegations = Delegations(
        keys={acme_key.keyid: acme_key},
        roles={
            "acme": DelegatedRole(
                name="acme", keyids=[acme_key.keyid], threshold=1, terminating=True, paths=["acme/*"]
            )
        },
    )

    snapshot = Metadata(Snapshot(expires=expires))
    snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    snapshot.signed.meta["acme.json"] = MetaFile(version=acme.signed.version)
    timestamp = Metadata(Timestamp(expires=expires))
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)

    def write(md: Metadata, name: str, signer: CryptoSigner) -> None:
        md.sign(signer, append=True)
        md.to_file(os.path.join(metadata_dir, name), serializer=JSONSerializer(compact=False))

    write(root, "1.root.json", signers["root"])
    write(targets, f"{targets.signed.version}.targets.json", signers["targets"])
    write(acme, f"{acme.signed.version}.acme.json", signers["acme"])
    write(snapshot, f"{snapshot.signed.version}.snapshot.json", signers["snapshot"])
    write(timestamp, "timestamp.json", signers["timestamp"])

    # Root rotation: version 2 with a new root key, signed by the old and the new key.
    new_root_signer = CryptoSigner.generate_ecdsa()
    root.signed.revoke_key(signers["root"].public_key.keyid, "root")
    root.signed.add_key(new_root_signer.public_key, "root")
    root.signed.version += 1
    root.signatures.clear()
    root.sign(signers["root"], append=True)
    write(root, "2.root.json", new_root_signer)


if __name__ == "__main__":
    main()

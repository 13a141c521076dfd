"""The reference TUF client (python-tuf's ngclient) against a repository, for the interoperability tests.

Usage: python_client.py MODE METADATA_URL TARGETS_URL TRUSTED_ROOT WORK_DIR TARGET_PATH...

Refreshes from METADATA_URL starting from TRUSTED_ROOT, then for each TARGET_PATH looks up its target info and
downloads it from TARGETS_URL into WORK_DIR/downloads.
- MODE "download": exit 0 if every target downloaded and verified; prints "downloaded PATH -> FILE" per target.
- MODE "tampered": exit 0 if every download was refused with a length or hash mismatch (prints "refused PATH:
  ERROR"); exit 1 if any target was accepted or failed another way.
"""

import os
import sys

from tuf.api import exceptions
from tuf.ngclient import Updater


def main() -> int:
    mode, metadata_url, targets_url, trusted_root, work_dir, *paths = sys.argv[1:]
    metadata_dir = os.path.join(work_dir, "metadata")
    download_dir = os.path.join(work_dir, "downloads")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(download_dir, exist_ok=True)
    bootstrap = None
    if not os.path.exists(os.path.join(metadata_dir, "root.json")):
        with open(trusted_root, "rb") as f:
            bootstrap = f.read()

    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=metadata_url,
        target_dir=download_dir,
        target_base_url=targets_url,
        bootstrap=bootstrap,
    )
    updater.refresh()
    status = 0
    for path in paths:
        info = updater.get_targetinfo(path)
        if info is None:
            print(f"not found {path}")
            return 1
        try:
            file = updater.download_target(info)
        except exceptions.LengthOrHashMismatchError as e:
            print(f"refused {path}: {e}")
            if mode != "tampered":
                status = 1
            continue
        print(f"downloaded {path} -> {file}")
        if mode == "tampered":
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

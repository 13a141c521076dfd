"""python-tuf's ngclient, one phase of the catalog benchmark (crates/client/benches/catalog.rs) per process.

Usage: python_tuf_catalog.py --phase PHASE --metadata REPO_METADATA_DIR --work WORK_DIR [--root ROOT] [--path P]...

The repository is read from local files: a FetcherInterface that opens the file a file:// URL names (python-tuf's
own fetchers speak HTTP only) and records each request. Trusted metadata is kept in WORK_DIR/metadata. Only the
phase's operation is timed (time.perf_counter, and CPU time with time.process_time), not interpreter start-up or
imports. Phases, as for custody:

- idle: nothing (the process's own footprint).
- first: Updater(bootstrap=ROOT) + refresh(), from a metadata directory without any metadata.
- unchanged: Updater(bootstrap=None: the cached root) + refresh(), the metadata of an earlier refresh present.
- resolve: after an untimed Updater() + refresh() as in "unchanged", get_targetinfo(P) for each --path.

Prints one JSON line: {"seconds": float, "cpu_seconds": float, "requests": [{"url", "bytes" (null: not found)}],
"found": [sha256...], "peak_rss_kib": VmHWM of this process at the end}.
"""

import argparse
import json
import os
import time
from urllib import parse

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface, Updater


class LocalFileFetcher(FetcherInterface):
    """Serves file:// URLs from the local file system; a missing file is HTTP 404 for the updater."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def _fetch(self, url: str):
        if not url.startswith("file://"):
            raise exceptions.DownloadError(f"{url}: only file:// URLs")
        path = parse.unquote(url[len("file://") :])
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.requests.append({"url": url, "bytes": None})
            raise exceptions.DownloadHTTPError(f"{url} not found", 404) from None
        self.requests.append({"url": url, "bytes": len(data)})
        return iter([data])


def peak_rss_kib() -> int:
    """This process's peak resident set, VmHWM of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", required=True)
    parser.add_argument("--metadata", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--root")
    parser.add_argument("--path", action="append", default=[])
    args = parser.parse_args()

    metadata_dir = os.path.join(args.work, "metadata")
    base_url = "file://" + parse.quote(os.path.abspath(args.metadata))
    fetcher = LocalFileFetcher()
    found = []

    def updater(bootstrap):
        return Updater(metadata_dir=metadata_dir, metadata_base_url=base_url, fetcher=fetcher, bootstrap=bootstrap)

    seconds = cpu_seconds = 0.0
    if args.phase == "idle":
        pass
    elif args.phase == "first":
        os.makedirs(metadata_dir, exist_ok=True)
        with open(args.root, "rb") as f:
            bootstrap = f.read()
        started, cpu = time.perf_counter(), time.process_time()
        updater(bootstrap).refresh()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    elif args.phase == "unchanged":
        started, cpu = time.perf_counter(), time.process_time()
        updater(None).refresh()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    elif args.phase == "resolve":
        client = updater(None)
        client.refresh()
        fetcher.requests.clear()
        started, cpu = time.perf_counter(), time.process_time()
        for path in args.path:
            info = client.get_targetinfo(path)
            if info is None:
                raise SystemExit(f"target {path} not found")
            found.append(info.hashes["sha256"])
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    else:
        raise SystemExit(f"unknown phase {args.phase}")
    report = {"seconds": seconds, "cpu_seconds": cpu_seconds, "requests": fetcher.requests, "found": found}
    report["peak_rss_kib"] = peak_rss_kib()
    print(json.dumps(report))


if __name__ == "__main__":
    main()

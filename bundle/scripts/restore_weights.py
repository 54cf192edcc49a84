"""Restore shipped weights that live in git history, not in the working tree (see ``weights_history.json``).

    python -m corx_bundle.scripts.restore_weights            # every listed file that is missing
    python -m corx_bundle.scripts.restore_weights --check    # exit 1 if one is missing or its sha256 differs

A file is read with ``git show <commit>:<path>`` from the checkout the bundle sits in, checked against the sha256
in ``large_files.yml`` and written atomically; a file already present with the right sha256 is left alone, one with
another sha256 is refused (it may be a newer training result: move it away first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from .atomic import atomic_path

BUNDLE = Path(__file__).resolve().parents[1]
HISTORY = BUNDLE / "weights_history.json"
LARGE_FILES = BUNDLE / "large_files.yml"


class RestoreError(RuntimeError):
    """A weight file cannot be restored from git history."""


def listed_sha256(rel_path: str, large_files: Path = LARGE_FILES) -> str:
    """The sha256 that ``large_files.yml`` gives for ``rel_path`` (bundle-relative)."""
    match = re.search(rf'path: "{re.escape(rel_path)}"\s+url: "[^"]*"\s+hash_val: "([0-9a-f]{{64}})"',
                      large_files.read_text())
    if not match:
        raise RestoreError(f"{large_files}: no sha256 listed for {rel_path}")
    return match[1]


def history_entries(history: Path = HISTORY) -> dict[str, str]:
    """{bundle-relative path: commit} of the weights kept in git history."""
    table = json.loads(history.read_text())
    return {path: entry["commit"] for path, entry in table.items() if not path.startswith("_")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def restore(rel_path: str, commit: str, bundle: Path = BUNDLE) -> str:
    """Write ``bundle/rel_path`` from ``commit`` unless it is already there; returns what was done."""
    target, expected = bundle / rel_path, listed_sha256(rel_path, bundle / LARGE_FILES.name)
    if target.exists():
        if _sha256(target) == expected:
            return f"{target}: present, sha256 matches"
        raise RestoreError(f"{target}: exists with a sha256 other than large_files.yml's {expected[:12]}...; "
                           "move it away (or list its sha256) before restoring")
    top = subprocess.run(["git", "-C", str(bundle), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise RestoreError(f"{target}: missing, and {bundle} is not in a git checkout to restore it from "
                           f"(commit {commit[:12]}); copy the file there by hand")
    repo_path = (bundle / rel_path).resolve().relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    blob = subprocess.run(["git", "-C", str(bundle), "show", f"{commit}:{repo_path}"], capture_output=True)
    if blob.returncode != 0:
        raise RestoreError(f"{target}: cannot read {repo_path} at commit {commit[:12]} "
                           f"(a shallow clone? fetch the full history): {blob.stderr.decode().strip()}")
    if hashlib.sha256(blob.stdout).hexdigest() != expected:
        raise RestoreError(f"{target}: the file at commit {commit[:12]} does not match large_files.yml's sha256")
    with atomic_path(target) as tmp:
        tmp.write_bytes(blob.stdout)
    return f"{target}: restored from commit {commit[:12]} ({len(blob.stdout) / 2**20:.1f} MiB)"


def check(rel_path: str, bundle: Path = BUNDLE) -> str | None:
    """None when ``bundle/rel_path`` is present with the listed sha256, else the problem."""
    target = bundle / rel_path
    if not target.is_file():
        return f"{target}: missing (run `make weights`)"
    if _sha256(target) != listed_sha256(rel_path, bundle / LARGE_FILES.name):
        return f"{target}: sha256 differs from large_files.yml"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on a missing or differing file")
    args = parser.parse_args(argv)
    status = 0
    for rel_path, commit in history_entries().items():
        try:
            if args.check:
                problem = check(rel_path)
                print(problem or f"{BUNDLE / rel_path}: ok", file=sys.stderr if problem else sys.stdout)
                status |= problem is not None
            else:
                print(restore(rel_path, commit))
        except RestoreError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

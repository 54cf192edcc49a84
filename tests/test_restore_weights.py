"""Weights kept in git history come back byte for byte, checked by sha256, and nothing present is overwritten."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from corx_bundle.scripts.restore_weights import RestoreError, check, restore

WEIGHT = "models/big/model.pt"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def bundle_with_history(tmp_path: Path) -> tuple[Path, str, bytes]:
    """A checkout whose bundle/models/big/model.pt was committed once and then removed from the tree."""
    repo, payload = tmp_path / "repo", b"weights \x00\x01" * 1000
    bundle = repo / "bundle"
    (bundle / "models" / "big").mkdir(parents=True)
    (bundle / WEIGHT).write_bytes(payload)
    (bundle / "large_files.yml").write_text(f'large_files:\n  - path: "{WEIGHT}"\n    url: ""\n'
                                            f'    hash_val: "{hashlib.sha256(payload).hexdigest()}"\n'
                                            '    hash_type: "sha256"\n')
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "weights")
    commit = _git(repo, "rev-parse", "HEAD")
    _git(repo, "rm", "-q", WEIGHT.join(["bundle/", ""]))
    return bundle, commit, payload


def test_restore_brings_the_file_back_and_leaves_a_matching_one(bundle_with_history) -> None:
    bundle, commit, payload = bundle_with_history
    assert check(WEIGHT, bundle) is not None and "missing" in check(WEIGHT, bundle)
    assert "restored" in restore(WEIGHT, commit, bundle)
    assert (bundle / WEIGHT).read_bytes() == payload
    assert check(WEIGHT, bundle) is None
    assert "present" in restore(WEIGHT, commit, bundle)


def test_restore_refuses_to_replace_a_different_file(bundle_with_history) -> None:
    bundle, commit, _ = bundle_with_history
    (bundle / WEIGHT).parent.mkdir(parents=True, exist_ok=True)
    (bundle / WEIGHT).write_bytes(b"a newer training result")
    with pytest.raises(RestoreError, match="sha256"):
        restore(WEIGHT, commit, bundle)
    assert (bundle / WEIGHT).read_bytes() == b"a newer training result"


def test_restore_names_the_commit_when_history_lacks_it(bundle_with_history) -> None:
    bundle, _, _ = bundle_with_history
    with pytest.raises(RestoreError, match="0123456789ab"):
        restore(WEIGHT, "0123456789abcdef0123456789abcdef01234567", bundle)
    assert not (bundle / WEIGHT).exists()


def test_restore_outside_git_says_so(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "large_files.yml").write_text(f'large_files:\n  - path: "{WEIGHT}"\n    url: ""\n'
                                            f'    hash_val: "{"0" * 64}"\n')
    with pytest.raises(RestoreError, match="not in a git checkout"):
        restore(WEIGHT, "0" * 40, bundle)

"""Write a saved diffusers folder into a Hugging Face cache in the hub client's own layout (no mocks).

    HF_HOME/hub/models--ORG--NAME/blobs/<sha256>          the file contents
    HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/...  relative symlinks into blobs/
    HF_HOME/hub/models--ORG--NAME/refs/<branch>           the commit id of that branch
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_to_hub_cache(hf_home: Path, repo_id: str, folder: Path, branch: str = "main",
                     commit: str | None = None) -> Path:
    """Cache `folder` as revision `branch` of `repo_id`; returns the snapshot folder."""
    commit = commit or hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for src in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot

"""The folders a studio may touch, and the one way a client-sent path becomes a file path.

A client names a file as `ROOT/relative/path`, where ROOT is the name of a configured root (the last
component of its folder, made unique). Absolute paths, `..` components and anything whose real path (symlinks
followed) leaves the root are refused, so no request can read or write outside the configured roots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sd_lora.errors import SdLoraError

__all__ = ["PathRefused", "Root", "Roots"]


class PathRefused(SdLoraError):
    """A client path outside the configured roots (answered with 403)."""


@dataclass(frozen=True)
class Root:
    name: str
    path: Path  # resolved


class Roots:
    def __init__(self, folders: list[str | Path]):
        self.roots: list[Root] = []
        used: set[str] = set()
        for folder in folders:
            path = Path(folder).expanduser().resolve()
            if not path.is_dir():
                raise SdLoraError(f"--data-root {folder}: not a folder; create it or name an existing one")
            base = path.name or "root"
            name, n = base, 2
            while name in used:
                name, n = f"{base}-{n}", n + 1
            used.add(name)
            self.roots.append(Root(name, path))

    def __iter__(self):
        return iter(self.roots)

    def __bool__(self) -> bool:
        return bool(self.roots)

    def resolve(self, client_path: str, *, must_exist: bool = True) -> Path:
        """The real path of `ROOT/rel`, or PathRefused saying why."""
        text = (client_path or "").strip().replace("\\", "/")
        if not text:
            raise PathRefused("empty path; name a folder as ROOT/sub/folder")
        pure = PurePosixPath(text)
        if pure.is_absolute() or (len(text) > 1 and text[1] == ":"):
            raise PathRefused(f"{client_path!r}: absolute paths are not accepted; write ROOT/sub/folder with ROOT one "
                              f"of: {', '.join(r.name for r in self.roots) or '(no --data-root given)'}")
        parts = pure.parts
        if ".." in parts:
            raise PathRefused(f"{client_path!r}: '..' is not allowed in paths")
        root = next((r for r in self.roots if r.name == parts[0]), None)
        if root is None:
            raise PathRefused(f"{client_path!r}: {parts[0]!r} is not a data root; roots: "
                              f"{', '.join(r.name for r in self.roots) or '(none: start the studio with --data-root DIR)'}")
        real = Path(os.path.realpath(root.path.joinpath(*parts[1:])))
        if real != root.path and root.path not in real.parents:
            raise PathRefused(f"{client_path!r} leads outside the root {root.name!r} (through a symbolic link)")
        if must_exist and not real.exists():
            raise PathRefused(f"{client_path!r} does not exist")
        return real

    def client_path(self, path: str | Path) -> str | None:
        """`ROOT/rel` for a real path under a root, else None."""
        real = Path(os.path.realpath(path))
        for root in self.roots:
            if real == root.path:
                return root.name
            if root.path in real.parents:
                return f"{root.name}/{real.relative_to(root.path).as_posix()}"
        return None

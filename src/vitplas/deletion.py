"""Deleting inside a run folder, never through a symlink out of it.

A run folder may hold symlinks (a `checkpoints/` on a scratch disk, a step folder linked from
another run). Whatever prunes a folder (`vitplas clean`, a finished run's train state, a
failed start, `--repair`) deletes a path only when no symlink on the way from the folder to
that path leads out of it; a path that is itself a symlink is removed as a link, its target
kept. What is left is reported, never deleted:

    remove_within(folder, paths, dry_run) -> Removal(freed bytes, left: {link: its target})
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Removal:
    """What a removal freed (bytes, symlinks not followed) and what it left: the symlink that
    leads out of the folder -> where it leads, for each path it did not delete."""

    freed: int = 0
    left: dict[Path, Path] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per symlink whose paths were left."""
        return [
            f"kept what {link} holds: it is a symlink out of the run folder (to {target}); "
            "nothing outside a run folder is deleted"
            for link, target in self.left.items()
        ]


def link_out(folder: Path, path: Path) -> Path | None:
    """The first symlink on the way from `folder` down to `path`'s parent that leads out of
    `folder` (None: the way stays inside)."""
    root = folder.resolve()
    try:
        parts = path.parent.relative_to(folder).parts
    except ValueError:
        return path.parent  # not under `folder` at all
    step = folder
    for part in parts:
        step = step / part
        if step.is_symlink() and not step.resolve().is_relative_to(root):
            return step
    return None if path.parent.resolve().is_relative_to(root) else path.parent


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files at and under `path`, never following a symlink."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size if path.is_file() and not path.is_symlink() else 0
    total = 0
    for top, dirs, files in os.walk(path):  # os.walk does not follow links to folders
        for name in files:
            entry = Path(top) / name
            if not entry.is_symlink():
                total += entry.lstat().st_size
        dirs[:] = [d for d in dirs if not (Path(top) / d).is_symlink()]
    return total


def remove_within(folder: str | Path, paths: Iterable[Path], dry_run: bool = False) -> Removal:
    """Delete each of `paths` (files, links, folder trees) under `folder` unless a symlink on
    the way leads out of `folder`; a link is removed as a link. `dry_run`: only count."""
    folder, out = Path(folder), Removal()
    for path in paths:
        if not os.path.lexists(path):
            continue
        link = link_out(folder, path)
        if link is not None:
            out.left.setdefault(link, link.resolve())
            continue
        out.freed += tree_bytes(path)
        if dry_run:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # removes links inside as links (fd-based on Linux)
        else:
            path.unlink()
    return out

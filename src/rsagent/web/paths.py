"""What the Browse tab may read: only files inside the folders given at start (`--browse`), judged
after resolving '..' and symlinks, so neither a typed path nor a link inside a folder can escape."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rsagent.core.errors import RsagentError
from rsagent.eval.results import RESULTS

RUN_FILES = ("summary.json", "stats.json", "run.json")  # beside results.jsonl in eval, score and synth folders
# folders a run keeps its pictures and pages in: never runs themselves, and large
_SKIP = {"trajectories", "images", "masks", "gallery", "pages", "__pycache__", "node_modules"}
MAX_DEPTH = 4
MAX_RUNS = 500


class PathRefused(RsagentError):
    """A path outside the browse folders, or one that does not exist inside them."""


@dataclass(frozen=True)
class BrowseRoots:
    roots: tuple[Path, ...]  # resolved, existing folders

    @classmethod
    def create(cls, folders: Iterable[str | Path]) -> BrowseRoots:
        resolved = []
        for folder in folders:
            path = Path(folder).expanduser()
            if not path.is_dir():
                raise RsagentError(f"--browse {folder}: not a folder")
            resolved.append(path.resolve(strict=True))
        return cls(tuple(dict.fromkeys(resolved)))  # in order, without repeats

    def contains(self, path: Path) -> bool:
        """Whether an already resolved path lies in (or is) one of the roots."""
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def resolve(self, path: str | Path) -> Path:
        """`path` (absolute, or relative to a root: the first root where it exists) with '..' and every
        symlink resolved; PathRefused unless that lies inside a root and exists."""
        text = str(path).strip()
        if not text or "\0" in text:
            raise PathRefused("no path given")
        if not self.roots:
            raise PathRefused("this server browses no folders (start it with --browse DIR)")
        given = Path(text)
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        inside_but_missing = False
        for candidate in candidates:
            try:
                real = candidate.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                continue
            if self.contains(real):
                if real.exists():
                    return real
                inside_but_missing = True
        if inside_but_missing:
            raise PathRefused(f"{text}: no such file or folder")
        raise PathRefused(f"refused: {text} is outside the folders this server browses")

    def run_folders(self) -> list[Path]:
        """Evaluation, score and synthesis folders under the roots (results.jsonl beside summary.json,
        stats.json or run.json), at most MAX_DEPTH levels down; symlinked folders are not entered."""
        found: list[Path] = []
        for root in self.roots:
            base_depth = len(root.parts)
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                here = Path(dirpath)
                if RESULTS in filenames and any(name in filenames for name in RUN_FILES):
                    found.append(here)
                    if len(found) >= MAX_RUNS:
                        return found
                if len(here.parts) - base_depth >= MAX_DEPTH:
                    dirnames.clear()
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP and not d.startswith(("."))
                                     and not d.startswith("checkpoint-"))
        return found

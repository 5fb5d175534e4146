"""Where the app writes each run's files (mask.png, trajectory.json, ...) before Gradio serves them:
one temporary folder, a subfolder per run, only the newest kept, all removed when the server stops."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from pathlib import Path

KEEP = 64


class OutputDirs:
    def __init__(self, keep: int = KEEP) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rsagent-web-"))
        self.keep = keep
        self._made: list[Path] = []
        self._lock = threading.Lock()

    def new(self) -> Path:
        """A fresh folder for one run; the oldest beyond `keep` are deleted (Gradio has copied their files)."""
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        with self._lock:
            self._made.append(folder)
            old, self._made = self._made[:-self.keep], self._made[-self.keep:]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return folder

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

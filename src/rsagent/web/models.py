"""The policies and the segmenter the app runs, built from `rsagent serve`'s options exactly as
`rsagent segment` builds them: the segmenter and the starting policy at start (so a bad option fails
there, in one line), any other policy the first time a user picks it."""

from __future__ import annotations

import argparse
import threading

from rsagent.cli_options import POLICIES, build_policy, build_segmenter
from rsagent.core.errors import RsagentError
from rsagent.policies.base import Policy
from rsagent.segmenters.base import Segmenter

NEEDS_GT = ("oracle",)  # policies that read the ground truth


class Models:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.segmenter: Segmenter = build_segmenter(args)
        self._policies: dict[str, Policy] = {}
        self._lock = threading.Lock()
        self.busy = threading.Lock()  # held while a turn runs: episodes share the policy and the segmenter
        self.policy(args.policy)

    @property
    def names(self) -> tuple[str, ...]:
        return POLICIES

    @property
    def default(self) -> str:
        return self.args.policy

    def policy(self, name: str) -> Policy:
        """The policy called `name`, built once with the server's options (RsagentError if it cannot be)."""
        if name not in POLICIES:
            raise RsagentError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
        with self._lock:
            if name not in self._policies:
                self._policies[name] = build_policy(argparse.Namespace(**{**vars(self.args), "policy": name}))
            return self._policies[name]

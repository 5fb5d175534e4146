"""The policy interface: one answer (text in the episode protocol) per active episode."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence

from rsagent.core.frames import Frame, PixelFrame
from rsagent.env.episode import Episode


class Policy(ABC):
    name: str = "policy"
    frame: Frame = PixelFrame()  # how the policy writes coordinates; the runner gives it to each episode

    @property
    def identifier(self) -> str:
        """What produced the answers (model id and settings), for reports."""
        return self.name

    @property
    def settings(self) -> dict:
        """Everything that shapes the answers (JSON-serialisable), recorded in trajectories and eval summaries."""
        return {}

    @abstractmethod
    def act(self, episodes: Sequence[Episode]) -> list[str | Exception]:
        """One assistant answer per episode, in order; the episodes are not finished.

        An exception in an episode's place fails that episode alone (e.g. its request to a server
        failed); raising fails every episode of the call.
        """


def format_answer(think: str, name: str, arguments: dict) -> str:
    """An answer in the protocol's canonical form (what the parser accepts as strictly well-formed)."""
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<think>{think}</think>\n<tool_call>\n{call}\n</tool_call>"

"""Policies: given episodes, produce one assistant answer each."""

from rsagent.policies.base import Policy, format_answer

__all__ = ["Policy", "format_answer"]

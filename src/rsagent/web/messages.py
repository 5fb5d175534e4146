"""The one-line messages the page shows: what went wrong for the user, never a stack trace
(unexpected errors are logged in full on the server instead)."""

from __future__ import annotations

import logging
from html import escape

from rsagent.core.errors import RsagentError

log = logging.getLogger("rsagent.web")

STATUS_CSS = ".msg{margin:.3em 0} .msg.err{color:#b00020;font-weight:600} .msg.info{color:#333}"


def user_message(exc: BaseException) -> str:
    if isinstance(exc, RsagentError):
        return str(exc)
    log.error("unexpected error in the web app", exc_info=exc)
    return f"something went wrong on the server ({type(exc).__name__}); its log has the details"


def info(text: str) -> str:
    return f"<p class='msg info'>{escape(text)}</p>"


def error(text: str) -> str:
    return f"<p class='msg err' role='alert'>⚠ {escape(text)}</p>"

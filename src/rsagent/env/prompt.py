"""The text of the system prompt (with the Hermes `# Tools` block Qwen2.5 models know) and the user turn."""

from __future__ import annotations

import json

from rsagent.env.tools import ToolSpec

_TASK = """You segment the object described by the user's query in an image, working in turns.
Each turn, think briefly inside <think></think>, then call exactly one tool.
{coordinates}: view 0 is the full image as you were shown it; zoom_in \
returns a new, enlarged view with its own id and frame. Omitted, "view" means the view shown \
in the latest image. Every tool that makes a candidate answers with an overlay of it, numbered by its id.
Check each overlay against the query, correct mistakes with refine, and call submit with the ids \
of the candidate(s) that together cover the target (an empty list if the target is absent)."""

_HERMES = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def task_prompt(max_turns: int, coordinates: str = "Coordinates are integer pixels of a view") -> str:
    """The system prompt without the tools block (chat templates given `tools=` append the same block)."""
    return f"{_TASK.format(coordinates=coordinates)}\nYou have at most {max_turns} turns."


def system_prompt(tools: list[ToolSpec], max_turns: int,
                  coordinates: str = "Coordinates are integer pixels of a view") -> str:
    block = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return f"{task_prompt(max_turns, coordinates)}\n\n{_HERMES.format(tools=block)}"


def user_text(query: str, shown: str) -> str:
    """`shown` describes view 0 in the policy's frame, e.g. "640x480 pixels"."""
    return f"Query: {query}\nThe image (view 0) is {shown}."

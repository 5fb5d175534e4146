"""The Browse tab: an evaluation or synthesis folder under the browse folders (or an uploaded
trajectory.json), paged through sorted by IoU or filtered to failures, each episode with its turns and
overlays, beside the folder's summary numbers."""

from __future__ import annotations

import gradio as gr

from rsagent.web import messages
from rsagent.web.limits import UploadLimits
from rsagent.web.pages import open_upload, render_page
from rsagent.web.paths import BrowseRoots
from rsagent.web.render import PANEL_CSS, message_html
from rsagent.web.runs import ORDERS, SHOW, RunFolder


def build_browse_tab(roots: BrowseRoots, limits: UploadLimits) -> None:
    found = [str(p) for p in roots.run_folders()]
    where = ", ".join(map(str, roots.roots)) or "none (start the server with --browse DIR)"
    opened = gr.State(None)  # RunFolder | OpenedTrajectory of this browser session
    page = gr.State(0)
    with gr.Row(equal_height=True):
        folder = gr.Dropdown(found, value=None, allow_custom_value=True, scale=5, elem_id="browse-folder",
                             label=f"Evaluation or synthesis folder ({len(found)} found under {where}; "
                                   "or type a path inside them)", interactive=bool(roots.roots))
        rescan = gr.Button("Rescan", scale=1, elem_id="browse-rescan")
    upload = gr.File(label=f"…or open a trajectory.json (with its source image, optionally; {limits.label_note})", file_count="multiple",
                     height=110, elem_id="browse-upload")
    with gr.Row():
        order = gr.Radio(list(ORDERS), value=ORDERS[0], label="Order", elem_id="browse-order")
        show = gr.Radio(list(SHOW), value=SHOW[0], label="Show", elem_id="browse-show")
    with gr.Row(equal_height=True):
        prev = gr.Button("◀ Previous", elem_id="browse-prev")
        label = gr.HTML("", elem_id="browse-page")
        nxt = gr.Button("Next ▶", elem_id="browse-next")
    status = gr.HTML("", css_template=messages.STATUS_CSS, elem_id="browse-status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            episodes = gr.HTML(message_html("Choose a folder or upload a trajectory.json."), css_template=PANEL_CSS,
                               elem_id="browse-episodes")
        with gr.Column(scale=1, min_width=260):
            summary = gr.HTML("", css_template=PANEL_CSS, elem_id="browse-summary")

    def show_page(what, how, which, number):
        try:
            html, side, text, number = render_page(what, how, which, number, roots, limits)
        except Exception as exc:  # noqa: BLE001
            return gr.skip(), gr.skip(), gr.skip(), number, messages.error(messages.user_message(exc))
        return html, side, messages.info(text) if text else "", number, ""

    def on_folder(path: str | None, how: str, which: str):
        if not path:
            return (None, *show_page(None, how, which, 0))
        try:
            run = RunFolder.open(path, roots)
        except Exception as exc:  # noqa: BLE001 - refused paths and unreadable folders are messages
            return None, message_html("Nothing open."), "", "", 0, messages.error(messages.user_message(exc))
        return (run, *show_page(run, how, which, 0))

    def on_upload(paths: list[str] | None, how: str, which: str):
        if not paths:
            return (gr.skip(),) * 7
        try:
            traj = open_upload(paths, limits)
        except Exception as exc:  # noqa: BLE001 - the files are taken off the box again, ready for others
            return None, message_html("Nothing open."), "", "", 0, messages.error(messages.user_message(exc)), None
        return (traj, *show_page(traj, how, which, 0), gr.skip())

    page_outputs = [episodes, summary, label, page, status]
    folder.change(on_folder, [folder, order, show], [opened, *page_outputs])
    upload.upload(on_upload, [upload, order, show], [opened, *page_outputs, upload])
    rescan.click(lambda: gr.Dropdown(choices=[str(p) for p in roots.run_folders()]), None, [folder])
    for radio in (order, show):
        radio.change(lambda what, how, which: show_page(what, how, which, 0), [opened, order, show], page_outputs)
    prev.click(lambda what, how, which, n: show_page(what, how, which, n - 1), [opened, order, show, page], page_outputs)
    nxt.click(lambda what, how, which, n: show_page(what, how, which, n + 1), [opened, order, show, page], page_outputs)

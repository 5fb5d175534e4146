"""The Segment tab: an image (uploaded, or a shapes scene drawn from a seed), a query, a policy; the
turns appear one by one as the agent plays them, then the final mask, downloadable with the trajectory."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.eval.report import prediction_picture
from rsagent.web import messages
from rsagent.web.inputs import SegmentInput, from_shapes, from_upload
from rsagent.web.limits import UploadLimits
from rsagent.web.live import play
from rsagent.web.models import NEEDS_GT, Models
from rsagent.web.outputs import OutputDirs
from rsagent.web.render import PANEL_CSS, enlarge

MAX_TURNS = 16
MAX_QUERY_CHARS = 500
RUN_QUEUE = "episode"  # one episode at a time on this server: they share the policy and the segmenter
POLICY_NOTES = {"oracle": "oracle: the scripted expert (reads the ground truth)",
                "demo": "demo: the shipped trained agent (shapes scenes only)"}


def input_picture(inp: SegmentInput) -> np.ndarray:
    """The input as shown before a run: the ground truth, when there is one, outlined in green."""
    gt = inp.gt if inp.gt is not None else np.zeros(inp.image.shape[:2], bool)
    return prediction_picture(enlarge(inp.image), np.zeros(enlarge(gt).shape, bool), enlarge(gt), 1024)


def _described(inp: SegmentInput) -> str:
    h, w = inp.image.shape[:2]
    gt = "with a ground-truth mask" if inp.gt is not None else "no ground truth"
    return f"Loaded {inp.source}: {w}x{h}, {gt}."


def check_request(inp: SegmentInput | None, query: str | None, policy: str, max_turns: float | None) -> tuple[str, int]:
    """The query and turn budget of a run request, or RsagentError saying what is missing."""
    if inp is None:
        raise RsagentError("upload an image or draw a shapes scene first")
    query = (query or "").strip()
    if not query:
        raise RsagentError("type a query: what to segment, in words")
    if len(query) > MAX_QUERY_CHARS:
        raise RsagentError(f"the query is {len(query)} characters; keep it under {MAX_QUERY_CHARS}")
    if policy in NEEDS_GT and inp.gt is None:
        raise RsagentError(f"the {policy} policy reads the ground truth: upload a ground-truth mask "
                           "(or draw a shapes scene, which has one)")
    try:
        turns = int(max_turns or 0)
    except (TypeError, ValueError):
        turns = 0
    if not 1 <= turns <= MAX_TURNS:
        raise RsagentError(f"the turn budget must be 1 to {MAX_TURNS}")
    return query, turns


def build_segment_tab(models: Models, limits: UploadLimits, outputs: OutputDirs, max_turns: int) -> None:
    state = gr.State(None)  # the SegmentInput of this browser session
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=340):
            with gr.Row():
                image_file = gr.File(label=f"Image (PNG, JPEG, ...; {limits.label_note})", height=150, elem_id="seg-image")
                gt_file = gr.File(label="Ground truth, optional (the oracle needs it)", height=150, elem_id="seg-gt")
            with gr.Row(equal_height=True):
                seed = gr.Number(value=0, precision=0, minimum=0, label="…or a shapes scene: seed", elem_id="seg-seed")
                draw = gr.Button("Draw a shapes scene", elem_id="seg-draw")
            query = gr.Textbox(label="Query", placeholder="what to segment, in words", max_length=MAX_QUERY_CHARS,
                               elem_id="seg-query")
            with gr.Row():
                policy = gr.Dropdown(list(models.names), value=models.default, label="Policy",
                                     info="; ".join(POLICY_NOTES[n] for n in models.names if n in POLICY_NOTES),
                                     elem_id="seg-policy")
                turns = gr.Slider(1, MAX_TURNS, value=min(max_turns, MAX_TURNS), step=1, label="Turn budget",
                                  elem_id="seg-turns")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="seg-run")
                stop = gr.Button("Stop", variant="stop", elem_id="seg-stop")
            status = gr.HTML(messages.info("Upload an image (and, for the oracle, its ground-truth mask: non-zero = "
                                           "target) or draw a shapes scene, type a query, press Run."),
                             css_template=messages.STATUS_CSS, elem_id="seg-status")
            preview = gr.Image(label="Input (ground truth outlined in green)", interactive=False, height=300,
                               elem_id="seg-preview")
        with gr.Column(scale=3, min_width=420):
            final = gr.Image(label="Final mask (ground truth outlined in green)", interactive=False, height=420,
                             elem_id="seg-final")
            with gr.Row():
                mask_button = gr.DownloadButton("Download mask.png", visible=False, elem_id="seg-mask-download")
                traj_button = gr.DownloadButton("Download trajectory.json", visible=False, elem_id="seg-traj-download")
            turn_panel = gr.HTML("", css_template=PANEL_CSS, elem_id="seg-turns")

    # a file that cannot be used is taken off its upload box again (returning None), so the box is ready for another
    def on_image(path: str | None, gt_path: str | None):
        if not path:
            return None, None, messages.info("No image."), gr.skip()
        try:
            inp = from_upload(path, limits)
        except Exception as exc:  # noqa: BLE001 - every failure is a message in the page
            return None, None, messages.error(messages.user_message(exc)), None
        note = ""
        if gt_path:
            try:
                inp = inp.with_gt(gt_path, limits)
            except Exception as exc:  # noqa: BLE001
                note = f" The ground-truth mask was not used: {messages.user_message(exc)}"
        return inp, input_picture(inp), messages.info(_described(inp) + note), gr.skip()

    def on_gt(gt_path: str | None, inp: SegmentInput | None):
        if not gt_path:  # cleared
            if inp is None:
                return None, gr.skip(), gr.skip(), gr.skip()
            inp = SegmentInput(inp.image, inp.name, inp.source, None, inp.query)
            return inp, input_picture(inp), messages.info(_described(inp)), gr.skip()
        if inp is None:
            return inp, gr.skip(), messages.error("upload the image first, then its ground-truth mask"), None
        try:
            inp = inp.with_gt(gt_path, limits)
        except Exception as exc:  # noqa: BLE001
            return inp, gr.skip(), messages.error(messages.user_message(exc)), None
        return inp, input_picture(inp), messages.info(_described(inp)), gr.skip()

    def on_draw(value: float | None):
        try:
            inp = from_shapes(value)
        except Exception as exc:  # noqa: BLE001
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), messages.error(messages.user_message(exc))
        return inp, input_picture(inp), inp.query, None, None, messages.info(_described(inp))

    def on_run(inp: SegmentInput | None, text: str | None, name: str, budget: float | None) -> Iterator[tuple]:
        hidden = gr.DownloadButton(visible=False)
        try:
            text, budget_turns = check_request(inp, text, name, budget)
            agent = models.policy(name)
        except Exception as exc:  # noqa: BLE001
            yield messages.error(messages.user_message(exc)), gr.skip(), gr.skip(), hidden, hidden
            return
        yield messages.info(f"Running {name} with {models.segmenter.name}…"), "", None, hidden, hidden
        try:
            steps = play(agent, models.segmenter, inp, text, budget_turns, outputs.new())
            while True:
                # each turn holds the models alone: a stopped run's turn still in flight finishes before
                # the next run's first turn starts (the lock is never held while the generator waits)
                with models.busy:
                    update = next(steps, None)
                if update is None:
                    return
                if not update.done:
                    yield messages.info(update.status), "\n".join(update.turns), gr.skip(), gr.skip(), gr.skip()
                    continue
                yield ((messages.error if update.failed else messages.info)(update.status), "\n".join(update.turns),
                       update.final, gr.DownloadButton(value=str(update.files["mask"]), visible=True),
                       gr.DownloadButton(value=str(update.files["trajectory"]), visible=True))
        except Exception as exc:  # noqa: BLE001
            yield messages.error(messages.user_message(exc)), gr.skip(), gr.skip(), hidden, hidden

    image_file.upload(on_image, [image_file, gt_file], [state, preview, status, image_file])
    image_file.clear(lambda: (None, None, messages.info("No image.")), None, [state, preview, status])
    gt_file.upload(on_gt, [gt_file, state], [state, preview, status, gt_file])
    gt_file.clear(on_gt, [gt_file, state], [state, preview, status, gt_file])
    draw.click(on_draw, [seed], [state, preview, query, image_file, gt_file, status])
    running = run.click(on_run, [state, query, policy, turns], [status, turn_panel, final, mask_button, traj_button],
                        concurrency_limit=1, concurrency_id=RUN_QUEUE)
    submitted = query.submit(on_run, [state, query, policy, turns], [status, turn_panel, final, mask_button, traj_button],
                 concurrency_limit=1, concurrency_id=RUN_QUEUE)
    # the message comes after the cancellation, so that the run's last update cannot overwrite it
    stop.click(None, None, None, cancels=[running, submitted]).then(
        lambda: messages.info("Stopped: the episode ended between turns; press Run to play it again."), None, [status])

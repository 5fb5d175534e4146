"""The Gradio app behind `rsagent serve`: the Segment and Browse tabs, the queue, and the server."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import gradio as gr

from rsagent.core.errors import RsagentError
from rsagent.web.browse_tab import build_browse_tab
from rsagent.web.limits import UploadLimits
from rsagent.web.models import Models
from rsagent.web.outputs import OutputDirs
from rsagent.web.paths import BrowseRoots
from rsagent.web.segment_tab import build_segment_tab

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
INTRO = ("**rsagent**: an agent segments what you describe, in turns: it looks, reasons, calls a "
         "segmentation tool, reads the overlay it gets back, corrects, and submits a mask.")
APP_CSS = "footer{display:none !important} .gradio-container{max-width:1400px !important}"


def build_app(models: Models, roots: BrowseRoots, limits: UploadLimits, outputs: OutputDirs,
              max_turns: int = 8) -> gr.Blocks:
    # delete_cache: uploads and served files older than an hour go, checked every 30 minutes
    # no telemetry from a local tool
    with gr.Blocks(title="rsagent", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Segment", id="segment", elem_id="tab-segment"):
                build_segment_tab(models, limits, outputs, max_turns)
            with gr.Tab("Browse", id="browse", elem_id="tab-browse"):
                build_browse_tab(roots, limits)
    # light events (uploads, paging) run beside an episode; the run event itself is limited to 1
    app.queue(default_concurrency_limit=4, max_size=64)
    return app


def serve(args: argparse.Namespace) -> int:
    """Start the server from `rsagent serve`'s options, print its URL, run until Ctrl-C."""
    limits = UploadLimits.from_options(args.max_upload_mb, args.max_upload_pixels)
    roots = BrowseRoots.create(args.browse or [])
    if not 1 <= args.port <= 65535:
        raise RsagentError(f"--port must be 1 to 65535, got {args.port}")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars around the server's lines
    models = Models(args)
    outputs = OutputDirs()
    app = build_app(models, roots, limits, outputs, args.max_turns)
    try:
        app.launch(server_name=args.host, server_port=args.port, max_file_size=limits.max_bytes, share=False,
                   inbrowser=False, prevent_thread_lock=True, quiet=True, ssr_mode=False, show_error=False,
                   css=APP_CSS)
    except OSError as exc:
        outputs.close()
        reason = str(exc).split(". ")[0]  # Gradio's advice after the first sentence names its own API
        raise RsagentError(f"cannot serve on {args.host}:{args.port} ({reason}); choose another --port") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"rsagent serve: http://{host}:{args.port}/ (policy {models.default}, segmenter {models.segmenter.name}; "
          f"browsing {', '.join(map(str, roots.roots)) or 'no folders'}); Ctrl-C stops", flush=True)
    if args.host not in LOCAL_HOSTS:
        print(f"rsagent serve: warning: listening on {args.host}: anyone who can reach this machine can run "
              "episodes and read the browse folders", file=sys.stderr, flush=True)
    # Ctrl-C and `kill` stop it cleanly even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then never raises KeyboardInterrupt)
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)  # raises KeyboardInterrupt whatever the signal
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("rsagent serve: stopping", flush=True)
    finally:
        app.close()
        outputs.close()
    print("rsagent serve: stopped", flush=True)  # after the server and its temporary folders are gone
    return 0

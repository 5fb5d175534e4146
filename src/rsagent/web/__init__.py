"""The web layer (`rsagent serve`): a Gradio app to segment images with the agent turn by turn and to
browse evaluation and synthesis folders. Needs the `web` extra (gradio), which only `app` and the tab
modules import; `limits`, `paths`, `runs`, `inputs`, `live` and `render` work without it."""

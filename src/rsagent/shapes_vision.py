"""Perception pretraining of the shapes model's vision tower on labels read off the scene graph.

    rsagent shapes model --out DIR --vision-steps 1500      (random init, then this stage)

Why: a 2.4M-parameter Qwen2.5-VL trained from random weights through its language model alone did not
learn even the colour of a lone shape in 600 steps (docs/shapes.md), while the same vision tower with
a linear head on its tokens learns it in about 100. The gradient that reaches a random vision tower
through a random language model is too weak to start from. This stage plays the part Qwen2.5-VL's
pretrained vision encoder plays for the 7B: before any agent training, each visual token already
says what it covers. Nothing here sees a query, a box or an answer.

Each merged visual token (28x28 pixels of a 112 px scene) is trained, through a linear head that is
then thrown away, to predict from the scene graph: the share of its pixels of each colour and of
each kind (background a class of its own), which cells of a 4x4 sub-grid any shape covers, and the
token's own row and column in the image: Qwen2.5-VL's visual tokens carry no absolute position (the
tower's rotary embedding is relative, and the text side's mrope rotates queries and keys, never the
values), so without this a box answer has no "where" to copy from. Learned in ~100 steps.
Scenes are `train` scenes under the same held-out colour-kind pairs, so `test-novel` stays novel.

With `aligned=True` the colour and kind classes are scored against the language model's own input
embeddings of the words (" red", " circle", ...; cosine, frozen here), so a token that covers a red
circle is pushed towards where the model's "red" and "circle" already point: what the language side
reads off a visual token starts out in its own vocabulary.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rsagent.core.errors import RsagentError
from rsagent.core.files import atomic_write_bytes
from rsagent.data.shapes.generate import HELD_OUT_PAIRS, rng_for
from rsagent.data.shapes.scene import COLOURS, KINDS, Scene, SceneConfig, sample_scene

_FIRST_SCENE = 5_000_000  # train seeds of this stage, far from those synthesis and the benches start at


def sub_grid(cell: int) -> int:
    """Occupancy sub-cells per token side: 4 for 28 px tokens, 2 for 14 px ones (whole pixels each)."""
    return next(k for k in (4, 2, 1) if cell % k == 0)


def token_labels(scene: Scene, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token (row-major, `cell`-pixel squares): colour shares (+ background), kind shares
    (+ background) and the sub-grid occupancy."""
    n = scene.size // cell
    owner = np.full((scene.size, scene.size), -1)
    for s in scene.shapes:
        owner[s.mask] = s.id
    colours = list(COLOURS)
    col = np.zeros((n * n, len(colours) + 1), np.float32)
    kind = np.zeros((n * n, len(KINDS) + 1), np.float32)
    sub = sub_grid(cell)
    occ = np.zeros((n * n, sub * sub), np.float32)
    for r in range(n):
        for c in range(n):
            block, i = owner[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell], r * n + c
            for s in scene.shapes:
                share = float((block == s.id).mean())
                col[i, colours.index(s.colour)] += share
                kind[i, KINDS.index(s.kind)] += share
            background = float((block < 0).mean())
            col[i, -1] += background
            kind[i, -1] += background
            occ[i] = (block >= 0).reshape(sub, cell // sub, sub, cell // sub).mean((1, 3)).reshape(-1)
    return col, kind, occ


def visual_tokens(visual, processor, images: list):
    """The merged visual tokens of `images`, all images' tokens in one (tokens, width) tensor, in order."""
    inputs = processor.image_processor(images=images, return_tensors="pt")
    return tower_tokens(visual, inputs["pixel_values"], inputs["image_grid_thw"])


def tower_tokens(visual, pixel_values, grid_thw):
    """The merged visual tokens of images the image processor has already cut into patches."""
    import torch

    tokens = visual(pixel_values, grid_thw=grid_thw).pooler_output
    return torch.cat(list(tokens)) if isinstance(tokens, (list, tuple)) else tokens


class _WordHead:
    """Class scores as cosines with the language model's embeddings of the class words (+ a learned
    background vector), times a learned scale; the occupancy through a plain linear layer."""

    def __init__(self, model, tokenizer, n_occ: int) -> None:
        import torch

        emb = model.get_input_embeddings().weight.detach()

        def rows(words):
            ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
            return torch.stack([emb[i].mean(0) for i in ids])  # a word of several tokens: their mean

        dim = emb.shape[1]
        self.colours, self.kinds = rows(list(COLOURS)), rows(KINDS)
        self.background = torch.nn.Parameter(torch.randn(2, dim) * emb.std())
        self.scale = torch.nn.Parameter(torch.tensor(10.0))
        self.occ = torch.nn.Linear(dim, n_occ)

    def parameters(self) -> list:
        return [self.background, self.scale, *self.occ.parameters()]

    def to(self, device) -> "_WordHead":
        self.colours, self.kinds = self.colours.to(device), self.kinds.to(device)
        for p in (self.background, self.scale):
            p.data = p.data.to(device)
        self.occ.to(device)
        return self

    def __call__(self, tokens):
        import torch
        import torch.nn.functional as F

        feats = F.normalize(tokens, dim=-1)
        col = torch.cat([self.colours, self.background[:1]])
        kind = torch.cat([self.kinds, self.background[1:]])
        return torch.cat([self.scale * feats @ F.normalize(col, dim=-1).T,
                          self.scale * feats @ F.normalize(kind, dim=-1).T, self.occ(tokens)], -1)


class _SceneBatches:
    """Step `i`'s batch of perception pretraining, ready for the tower: the scenes' pixel values and grid, and
    their token labels. Indexed by step, so a DataLoader's worker processes make exactly the batches the
    main process would (drawing and labelling 32 scenes costs about as much as the tower's step)."""

    def __init__(self, processor, steps: int, batch: int, seed: int, size: int, cell: int) -> None:
        self.image_processor, self.steps, self.batch = processor.image_processor, steps, batch
        self.seed, self.size, self.cell = seed, size, cell
        self.banned = frozenset(HELD_OUT_PAIRS)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple:
        import torch

        first = _FIRST_SCENE + self.seed * 10_000_000 + step * self.batch
        scenes = [sample_scene(rng_for("train", first + j), SceneConfig(size=self.size), banned=self.banned)
                  for j in range(self.batch)]
        labels = [token_labels(s, self.cell) for s in scenes]
        inputs = self.image_processor(images=[s.image for s in scenes], return_tensors="pt")
        return (inputs["pixel_values"], inputs["image_grid_thw"],
                *(torch.from_numpy(np.concatenate([lab[k] for lab in labels])) for k in range(3)))


VISION_STATE = "vision_state.pt"


def pretrain_vision(model, processor, steps: int, *, batch: int = 32, lr: float = 2e-3, seed: int = 0,
                    size: int = 112, aligned: bool = False, rescale: bool = False, workers: int = 0,
                    log: Callable[[dict], None] | None = None, checkpoint: Path | None = None,
                    save_every: int = 250, device: str = "cpu") -> list[dict]:
    """Train `model.model.visual` in place for `steps` steps; returns the log (every 25 steps). With
    `rescale`, the visual tokens then leave at the length of word embeddings (`match_text_scale`).
    `workers` processes draw the scenes ahead of the tower (0: the same batches, drawn in this process).
    With a `checkpoint` folder, the tower, head and optimizer are saved there every `save_every` steps and a
    run finds and continues the state it holds: batches are indexed by step, so a resumed run ends with the
    weights of an uninterrupted one. The tower trains on `device` and is back on the CPU when this returns
    (the head starts from the same random weights on any device)."""
    import torch
    import torch.nn.functional as F

    visual = model.model.visual
    merge = model.config.vision_config.spatial_merge_size * model.config.vision_config.patch_size
    torch.manual_seed(seed)
    n_col, n_kind = len(COLOURS) + 1, len(KINDS) + 1
    grid = size // merge  # tokens per side
    n_occ = sub_grid(merge) ** 2
    n_rest = n_occ + 2 * grid  # occupancy, then the token's row and column
    if aligned:
        head = _WordHead(model, processor.tokenizer, n_rest)
    else:
        head = torch.nn.Linear(model.config.vision_config.out_hidden_size, n_col + n_kind + n_rest)
    visual.to(device)
    head.to(device)
    opt = torch.optim.AdamW(list(visual.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    settings = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "size": size, "aligned": aligned,
                "token_pixels": merge, "patch": model.config.vision_config.patch_size,
                "text_layers": model.config.text_config.num_hidden_layers}
    first, records, offset = _restore(checkpoint, settings, visual, head, opt)
    scenes = _SceneBatches(processor, steps, batch, seed, size, merge)
    batches = torch.utils.data.DataLoader(torch.utils.data.Subset(scenes, range(first, steps)), batch_size=None,
                                          num_workers=workers, prefetch_factor=2 if workers else None)
    visual.train()
    start = time.perf_counter() - offset
    for step, batch_ in enumerate(batches, first + 1):
        pixels, grid_thw, col, kind, occ = (t.to(device) for t in batch_)
        for group in opt.param_groups:  # warm-up, then cosine to a tenth
            group["lr"] = lr * min(1.0, step / 50) * (0.1 + 0.45 * (1 + np.cos(np.pi * step / steps)))
        out = head(tower_tokens(visual, pixels, grid_thw))
        a, b = n_col, n_col + n_kind
        c, d = b + n_occ, b + n_occ + grid
        where = torch.arange(grid * grid, device=device).repeat(len(grid_thw))  # row-major, as the merged tokens come
        loss = (-(col * F.log_softmax(out[:, :a], -1)).sum(-1).mean()
                - (kind * F.log_softmax(out[:, a:b], -1)).sum(-1).mean()
                + F.binary_cross_entropy_with_logits(out[:, b:c], occ)
                + F.cross_entropy(out[:, c:d], where // grid) + F.cross_entropy(out[:, d:], where % grid))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps:
            shape = col[:, -1] < 0.5  # tokens mostly covered by shapes: the accuracy that matters
            with torch.no_grad():
                hit_col = (out[:, :a].argmax(-1) == col.argmax(-1))[shape].float().mean()
                hit_kind = (out[:, a:b].argmax(-1) == kind.argmax(-1))[shape].float().mean()
                hit_where = ((out[:, c:d].argmax(-1) == where // grid) & (out[:, d:].argmax(-1) == where % grid)).float().mean()
            rec = {"step": step, "seconds": round(time.perf_counter() - start, 1), "loss": round(loss.item(), 4),
                   "colour_acc": round(float(hit_col), 3), "kind_acc": round(float(hit_kind), 3),
                   "position_acc": round(float(hit_where), 3)}
            records.append(rec)
            if log:
                log(rec)
        if checkpoint is not None and step % save_every == 0 and step < steps:
            _save(checkpoint, {"settings": settings, "step": step, "records": records,
                               "seconds": time.perf_counter() - start, "visual": visual.state_dict(),
                               "head": [p.detach() for p in head.parameters()], "optimizer": opt.state_dict()})
    visual.eval().to("cpu")
    if rescale:
        records[-1]["rescaled_by"] = match_text_scale(model, processor, size=size, seed=seed)
    return records


def _restore(checkpoint: Path | None, settings: dict, visual, head, opt) -> tuple[int, list[dict], float]:
    """(steps done, log so far, seconds so far) of the run saved in `checkpoint`, its weights and optimizer
    loaded; (0, [], 0.0) when there is none."""
    import torch

    path = checkpoint / VISION_STATE if checkpoint is not None else None
    if path is None or not path.exists():
        return 0, [], 0.0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["settings"] != settings:
        changed = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
        raise RsagentError(f"{path}: saved by a pretraining with other settings ((then, now): {changed}); "
                           f"resume with the same settings or start in a new folder")
    visual.load_state_dict(state["visual"])
    with torch.no_grad():
        for p, saved in zip(head.parameters(), state["head"]):
            p.copy_(saved)
    opt.load_state_dict(state["optimizer"])
    return state["step"], state["records"], state["seconds"]


def _save(checkpoint: Path, state: dict) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    # a crash while saving leaves the previous state whole
    atomic_write_bytes(checkpoint / VISION_STATE, buffer.getvalue())


def match_text_scale(model, processor, *, size: int = 112, n: int = 32, seed: int = 0) -> float:
    """Scale the vision merger's last linear layer so visual tokens have the mean norm of the text
    embeddings; returns the factor. Why: pretraining leaves visual tokens ~100x longer than word
    embeddings, and in the language model's residual stream a visual token that long drowns what
    attention adds to it (the query it should be compared with). A pure rescaling of the output: what
    the tokens say (the direction) is unchanged."""
    import torch

    banned = frozenset(HELD_OUT_PAIRS)
    scenes = [sample_scene(rng_for("train", _FIRST_SCENE - 1 - seed * n - j), SceneConfig(size=size), banned=banned).image
              for j in range(n)]
    last = model.model.visual.merger.mlp[-1]
    with torch.no_grad():
        tokens = visual_tokens(model.model.visual, processor, scenes)
        factor = float(model.get_input_embeddings().weight.norm(dim=-1).mean() / tokens.norm(dim=-1).mean())
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return factor

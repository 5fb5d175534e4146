"""The tokens of an episode as the `qwen` policy fed and sampled them, and scoring them again.

RL computes its loss on the ids that were sampled, never on a decode and re-tokenisation of the text
(DESIGN.md, "From trajectories to training"). With `QwenConfig(record=True)` the policy keeps, per turn,
the part it fed (ids, modality types, 3D rope positions, pixels) and what it generated with each token's
sampling log-probability. `score_episodes` rebuilds each episode's sequence exactly as it sat in the
KV cache (every fed part, then every generated token but the last of each turn, which was never fed)
and computes the log-probabilities of the generated tokens in one forward with gradients: at the
first optimisation step they equal the sampling ones (importance ratio 1; tests/test_qwen_tokens.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, banned: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """log p(token) under the distribution sampled from: banned ids removed, logits / temperature.
    `logits` (..., vocab) float; `tokens` (...). Top-p is not part of it (as in TRL and vLLM)."""
    logits = logits.float().clone()
    logits[..., banned.to(logits.device)] = float("-inf")
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class TurnTokens:
    """One turn: the part fed (after the cached sequence) and the tokens sampled after it."""

    fed: torch.Tensor  # (L,) ids
    mm_types: torch.Tensor  # (L,) 0 text, 1 image
    positions: torch.Tensor  # (3, L) absolute rope positions
    pixel_values: list[torch.Tensor]  # per image in this part
    grids: list[torch.Tensor]  # per image (t, h, w)
    generated: list[int]
    logprobs: list[float]  # sampling log-probability of each generated token


@dataclass
class EpisodeTokens:
    temperature: float  # the log-probabilities' temperature
    turns: list[TurnTokens] = field(default_factory=list)

    @property
    def n_generated(self) -> int:
        return sum(len(t.generated) for t in self.turns)

    def sequence(self) -> dict:
        """The cached sequence: ids, positions (3, N), pixels, grids; `predict_at[k]` is the index whose
        logits gave generated token `targets[k]`; `old_logprobs[k]` its sampling log-probability."""
        ids, positions, pixels, grids, predict_at, targets, old = [], [], [], [], [], [], []
        length = 0
        for turn in self.turns:
            ids.append(turn.fed)
            positions.append(turn.positions)
            pixels += turn.pixel_values
            grids += turn.grids
            length += len(turn.fed)
            fed_gen = turn.generated[:-1]  # the last one was never fed (a stop, or it leads the next part)
            start = int(turn.positions.max()) + 1
            ids.append(torch.tensor(fed_gen, dtype=torch.long))
            positions.append(torch.arange(start, start + len(fed_gen)).expand(3, -1))
            predict_at += range(length - 1, length - 1 + len(turn.generated))
            length += len(fed_gen)
            targets += turn.generated
            old += turn.logprobs
        return {"ids": torch.cat(ids), "positions": torch.cat(positions, dim=1), "pixel_values": pixels,
                "grids": grids, "predict_at": torch.tensor(predict_at, dtype=torch.long),
                "targets": torch.tensor(targets, dtype=torch.long),
                "old_logprobs": torch.tensor(old, dtype=torch.float32)}


@dataclass
class Scored:
    """One episode's generated tokens under the current weights."""

    logprobs: torch.Tensor  # (n_generated,), with gradients when computed with them
    entropy: torch.Tensor  # (n_generated,), no gradients: the full distribution's entropy per token
    old_logprobs: torch.Tensor  # (n_generated,) sampling log-probabilities


def score_episodes(model, episodes: list[EpisodeTokens], banned: torch.Tensor, pad_id: int) -> list[Scored]:
    """Log-probabilities of every generated token of `episodes` under `model` (a Qwen2.5-VL for
    conditional generation), batched: sequences right-padded, positions as recorded, images in order."""
    device = next(model.parameters()).device
    seqs = [ep.sequence() for ep in episodes]
    batch, width = len(seqs), max(len(s["ids"]) for s in seqs)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    pos = torch.zeros(3, batch, width, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s["ids"])
        ids[b, :n], mask[b, :n], pos[:, b, :n] = s["ids"], 1, s["positions"]
    pixels = [p for s in seqs for p in s["pixel_values"]]
    grids = [g for s in seqs for g in s["grids"]]
    dtype = next(model.parameters()).dtype
    out = model.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                      pixel_values=torch.cat(pixels).to(device, dtype) if pixels else None,
                      image_grid_thw=torch.stack(grids).to(device) if grids else None, use_cache=False)
    rows = torch.cat([torch.full((len(s["predict_at"]),), b, dtype=torch.long) for b, s in enumerate(seqs)])
    cols = torch.cat([s["predict_at"] for s in seqs])
    targets = torch.cat([s["targets"] for s in seqs]).to(device)
    # the vocabulary projection only where a generated token is predicted (vocabularies are large)
    logits = model.lm_head(out.last_hidden_state[rows.to(device), cols.to(device)]).float()
    logits[:, banned.to(device)] = float("-inf")
    logp = torch.log_softmax(logits / episodes[0].temperature, dim=-1)
    chosen = logp.gather(-1, targets[:, None]).squeeze(-1)
    with torch.no_grad():
        probs = logp.exp()
        entropy = -(probs * logp.masked_fill(probs == 0, 0.0)).sum(-1)
    sizes = [len(s["targets"]) for s in seqs]
    return [Scored(lp, ent, s["old_logprobs"].to(device))
            for lp, ent, s in zip(chosen.split(sizes), entropy.split(sizes), seqs)]

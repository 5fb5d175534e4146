"""Grounding's auxiliary losses, thrown away after training: they supervise the circuit that picks the
queried shape where it forms, instead of only through the four coordinates of the answer."""

from __future__ import annotations

import numpy as np
import torch


class MatchHead(torch.nn.Module):
    """From the language model's hidden state at each visual token (after `layer` layers), is this token
    part of the queried shape? It supervises the circuit grounding needs (visual tokens that read the
    query, before them, and say whether they match it) densely, at every visual token. It is trained
    (its state is in every checkpoint)."""

    def __init__(self, hidden: int, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.linear = torch.nn.Linear(hidden, 1)

    def loss(self, hidden_states, inputs, items: list[dict], image_token_id: int):
        states = hidden_states[self.layer][inputs["input_ids"] == image_token_id]  # (batch x tokens, hidden), in order
        target = torch.from_numpy(np.concatenate([it["cover"] for it in items])).float().to(states.device)
        logits = self.linear(states).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


class AttendTarget:
    """No parameters: one attention head of the language model (`head` of `layer`), at the positions that
    write the box's four coordinates, is trained to put its weight on the visual tokens of the queried
    shape (in proportion to how much of each it covers). The answer's own circuit is supervised where the
    choice is made; the head's values (the tokens' taught rows and columns) then carry the target's place
    to the answer."""

    def __init__(self, tokenizer, layer: int, head: int = 0) -> None:
        from rsagent.shapes_model import NUMBERS

        self.layer, self.head = layer, head
        self.numbers = torch.tensor(sorted({tokenizer.convert_tokens_to_ids(f) for v in range(NUMBERS)
                                            for f in (str(v), f" {v}")}))

    def loss(self, attentions, inputs, items: list[dict], image_token_id: int):
        att = attentions[self.layer][:, self.head]  # (batch, query position, key position)
        labels, ids = inputs["labels"], inputs["input_ids"]
        numbers = self.numbers.to(labels.device)
        losses = []
        for b, it in enumerate(items):
            coords = (torch.isin(labels[b], numbers)).nonzero().flatten()[:4]
            target = torch.from_numpy(it["cover"]).float().to(att.device)
            if len(coords) < 4 or target.sum() == 0:
                continue
            visual = (ids[b] == image_token_id).nonzero().flatten()[:len(target)]  # the first image's tokens
            weights = att[b][coords - 1][:, visual]  # the rows that predict each coordinate
            losses.append(-(target / target.sum() * torch.log(weights + 1e-6)).sum(-1).mean())
        return torch.stack(losses).mean() if losses else torch.zeros((), device=att.device)

"""The `qwen` policy: Qwen2.5-VL through transformers, many episodes at once, KV cache kept across turns.

Each episode keeps the keys and values of everything the model has read or written so far. A turn
feeds only what is new (the tool observation with its images, and the assistant header), then
decodes. Episodes of a lock-step batch are prefilled together (new parts right-padded, caches
left-aligned, holes masked) and decoded together; afterwards each cache is compacted back to its
own tokens. Positions are Qwen2.5-VL's 3D rope indices, computed for the new part and offset by
where the episode's sequence ended, which equals computing them over the whole sequence.

With `reuse_cache=False` every turn re-encodes the episode's whole token sequence instead: the
same tokens, the same images, the same positions (the benchmark's and the equality test's baseline).

Images are rendered at the smart-resized size of the policy's coordinate frame, so the processor
does not resize them and the model's absolute coordinates are the view's pixels.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from weakref import WeakKeyDictionary

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from rsagent.core.errors import ModelLoadError
from rsagent.core.frames import (
    QWEN_DEFAULT_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    SmartResizeFrame,
)
from rsagent.core.weights import load_pretrained
from rsagent.env.episode import Episode
from rsagent.policies.base import Policy
from rsagent.policies.chat import (
    CHAT_TEMPLATE,
    chat_images,
    render_chat,
    render_images,
)
from rsagent.policies.qwen_tokens import EpisodeTokens, TurnTokens, sampling_logprobs

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# transformers 5.24 renames the cache argument of Qwen2_5_VLModel.forward (`cache`, from 5.40) and warns on every
# decoding step; the old name works through 5.39 (pyproject pins transformers below 5.40).
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)
_END = "<|im_end|>\n"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# written beside a model trained or built by this project: the pixel limits its views were shown at
PIXEL_LIMITS_FILE = "rsagent_pixels.json"
_HOW = ("pass a local folder holding a transformers Qwen2.5-VL checkpoint (config.json, model.safetensors, "
        "tokenizer files) with --model DIR (Python: QwenConfig(model=DIR))")


class QwenVLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without the video processor, which needs torchvision."""

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


@dataclass(frozen=True)
class QwenConfig:
    model: str = DEFAULT_MODEL  # hub id or local folder
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    # per image, as the processor's shortest/longest edge; None: the limits the model folder records
    # (PIXEL_LIMITS_FILE, written by `shapes model` and `train`), else Qwen2.5-VL's defaults
    min_pixels: int | None = None
    max_pixels: int | None = None
    reuse_cache: bool = True
    seed: int = 0
    # keep, per episode, every token fed and generated with its sampling log-probability, positions and
    # pixels (`episode_tokens`): what RL computes its loss on
    record: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def make_processor(tokenizer, images=None, min_pixels: int = QWEN_MIN_PIXELS,
                   max_pixels: int = QWEN_DEFAULT_MAX_PIXELS) -> QwenVLProcessor:
    """The processor from a tokenizer and a Pillow image processor (default: Qwen2.5-VL's stock one,
    14-pixel patches merged 2x2, CLIP normalisation), its pixel limits set, with the project's template."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = images if images is not None else Qwen2VLImageProcessorPil()
    images.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return QwenVLProcessor(images, tokenizer, chat_template=CHAT_TEMPLATE)


def load_processor(model: str, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_DEFAULT_MAX_PIXELS,
                   need_weights: bool = False) -> QwenVLProcessor:
    """Tokenizer + the Pillow image processor from a hub id or folder, and the project's chat template."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    def load(source: str, **kwargs) -> QwenVLProcessor:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        folder = Path(source)
        images = None
        if folder.is_dir() and not any((folder / n).is_file() for n in _IMAGE_PROCESSOR_FILES):
            # a checkpoint saved without its image processor: Qwen2.5-VL's stock one serves
            warnings.warn(f"{source} has no image processor config; using Qwen2.5-VL's defaults", stacklevel=3)
        else:
            images = Qwen2VLImageProcessorPil.from_pretrained(source, **kwargs)
        return make_processor(tokenizer, images, min_pixels, max_pixels)

    return load_pretrained(load, model, what="Qwen2.5-VL model", how=_HOW, model_types=("qwen2_5_vl",),
                           need_weights=need_weights)


def pixel_limits(model: str, min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """(min_pixels, max_pixels): the explicit values, else what the model folder records, else the defaults."""
    saved = {}
    path = Path(model) / PIXEL_LIMITS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
    return (min_pixels or int(saved.get("min_pixels", QWEN_MIN_PIXELS)),
            max_pixels or int(saved.get("max_pixels", QWEN_DEFAULT_MAX_PIXELS)))


def save_pixel_limits(folder: str | Path, min_pixels: int, max_pixels: int) -> None:
    """Record the limits a model was trained (or built) for, so `--policy qwen --model DIR` uses them."""
    (Path(folder) / PIXEL_LIMITS_FILE).write_text(
        json.dumps({"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}) + "\n")


def save_model_folder(folder: str | Path, model, processor, min_pixels: int | None = None,
                      max_pixels: int | None = None) -> None:
    """Weights, processor and the pixel limits the model was trained at (default: the processor's): a folder
    `--policy qwen --model DIR` loads and shows views as trained."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    size = processor.image_processor.size
    save_pixel_limits(folder, min_pixels or size["shortest_edge"], max_pixels or size["longest_edge"])


def load_qwen_model(model: str, device: str, dtype: torch.dtype) -> Qwen2_5_VLForConditionalGeneration:
    def load(source: str, **kwargs):
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)

    net = load_pretrained(load, model, what="Qwen2.5-VL model", how=_HOW, model_types=("qwen2_5_vl",))
    return net.to(device).eval()


@dataclass
class _State:
    """One episode's sequence: its KV cache (reuse_cache) or everything it has fed (re-encoding)."""

    # re-encoding only: every token and image fed to the model so far, in order
    ids: list[int] = field(default_factory=list)
    mm_types: list[int] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)  # per image
    grids: list[torch.Tensor] = field(default_factory=list)
    # reuse_cache only: the keys and values of that sequence
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer (1, heads, len, dim)
    values: list[torch.Tensor] = field(default_factory=list)
    next_pos: int = 0  # the rope position of the next token
    pending: list[int] = field(default_factory=list)  # generated but not yet fed (cut off by max_new_tokens)
    n_messages: int = 0  # messages already in the sequence (through the last assistant answer)
    record: EpisodeTokens | None = None  # config.record only


@dataclass
class _Chunk:
    ids: torch.Tensor  # (L,)
    mm_types: torch.Tensor  # (L,)
    pixel_values: list[torch.Tensor]
    grids: list[torch.Tensor]
    positions: torch.Tensor  # (3, L), absolute


class QwenPolicy(Policy):
    name = "qwen"
    model_label: str | None = None  # shown in place of the model path in `identifier` (the shipped agent)

    def __init__(self, config: QwenConfig = QwenConfig(), model=None, processor: QwenVLProcessor | None = None) -> None:
        min_pixels, max_pixels = pixel_limits(config.model, config.min_pixels, config.max_pixels)
        self.config = config = replace(config, min_pixels=min_pixels, max_pixels=max_pixels)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if config.dtype is not None and config.dtype not in _DTYPES:
            raise ModelLoadError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[config.dtype] if config.dtype else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        # the processor first: it is quick, and a folder without weights is refused before any loading
        self.processor = processor or load_processor(config.model, config.min_pixels, config.max_pixels,
                                                     need_weights=model is None)
        self.model = model if model is not None else load_qwen_model(config.model, str(self.device), dtype)
        self.frame = SmartResizeFrame(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
        tok = self.processor.tokenizer
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self._stops = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        self._banned = self._banned_ids()
        self._states: WeakKeyDictionary[Episode, _State] = WeakKeyDictionary()
        self._generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.stats = {"prefill_tokens": 0, "generated_tokens": 0, "calls": 0}

    @property
    def identifier(self) -> str:
        mode = "greedy" if self.config.temperature <= 0 else f"T={self.config.temperature},top_p={self.config.top_p}"
        return f"qwen:{self.model_label or self.config.model}:{mode}"

    @property
    def settings(self) -> dict:
        return {**self.config.to_dict(), "device": str(self.device), "dtype": str(self.model.dtype).replace("torch.", "")}

    def _banned_ids(self) -> torch.Tensor:
        """Tokens an answer may not contain: special tokens other than the stops, and unused vocabulary rows."""
        tok = self.processor.tokenizer
        special = {i for i, t in tok.added_tokens_decoder.items() if t.special} - self._stops
        vocab = self.model.get_output_embeddings().weight.shape[0]
        banned = sorted(special | set(range(len(tok), vocab)))
        return torch.tensor(banned, dtype=torch.long)

    # --- building the new part of each episode's sequence ------------------------------------------
    def _new_part(self, episode: Episode, state: _State) -> tuple[torch.Tensor, torch.Tensor, list, list]:
        """Token ids, modality types, pixel values and grids of what this turn adds to the sequence."""
        messages = episode.messages()
        full = render_chat(self.processor.tokenizer, messages, add_generation_prompt=True)
        if state.n_messages == 0:
            text, new = full, messages
        else:
            done = render_chat(self.processor.tokenizer, messages[:state.n_messages], add_generation_prompt=False)
            if not (full.startswith(done) and done.endswith(_END)):
                raise RuntimeError("the chat template did not extend the previous prompt; cannot reuse the cache")
            text, new = full[len(done) - len(_END):], messages[state.n_messages:]  # the answer's end marker leads
        images = chat_images(render_images(episode, new))
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        ids = torch.cat([torch.tensor(state.pending, dtype=torch.long), inputs["input_ids"][0]])
        mm = torch.cat([torch.zeros(len(state.pending), dtype=torch.long), inputs["mm_token_type_ids"][0].long()])
        grids = list(inputs["image_grid_thw"]) if images else []
        pixels = list(torch.split(inputs["pixel_values"], [int(g.prod()) for g in grids])) if images else []
        state.n_messages = len(messages) + 1  # + the answer this turn will add
        state.pending = []
        return ids, mm, pixels, grids

    def _positioned(self, ids: torch.Tensor, mm: torch.Tensor, pixels: list[torch.Tensor], grids: list[torch.Tensor],
                    start: int) -> _Chunk:
        grid = torch.stack(grids) if grids else None
        pos, _ = self.model.model.get_rope_index(ids[None], mm_token_type_ids=mm[None], image_grid_thw=grid)
        return _Chunk(ids, mm, pixels, grids, pos[:, 0] + start)

    # --- the model ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def act(self, episodes: Sequence[Episode]) -> list[str]:
        states = [self._states.setdefault(ep, _State()) for ep in episodes]
        parts = [self._new_part(ep, st) for ep, st in zip(episodes, states)]
        if self.config.reuse_cache:  # the new part only, after the cached sequence
            chunks = [self._positioned(*part, st.next_pos) for part, st in zip(parts, states)]
        else:  # the whole sequence again, from an empty cache
            chunks = []
            for st, (ids, mm, pixels, grids) in zip(states, parts):
                st.ids += ids.tolist(); st.mm_types += mm.tolist()
                st.pixel_values += pixels; st.grids += grids
                chunks.append(self._positioned(torch.tensor(st.ids), torch.tensor(st.mm_types), st.pixel_values,
                                               st.grids, 0))
        generated, logprobs = self._generate(states, chunks)
        if self.config.record:
            for st, (ids, mm, pixels, grids), ch, gen, lps in zip(states, parts, chunks, generated, logprobs):
                st.record = st.record or EpisodeTokens(self.sampling_temperature)
                # re-encoding fed the whole sequence; the turn's own part is its tail
                st.record.turns.append(TurnTokens(ids, mm, ch.positions[:, -len(ids):].clone(), pixels, grids,
                                                  gen, lps))
        self.stats["prefill_tokens"] += sum(len(ch.ids) for ch in chunks)
        self.stats["generated_tokens"] += sum(len(g) for g in generated)
        self.stats["calls"] += 1
        tok = self.processor.tokenizer
        return [tok.decode([t for t in out if t not in self._stops], skip_special_tokens=False) for out in generated]

    @property
    def sampling_temperature(self) -> float:
        """The temperature log-probabilities are taken at (1 for greedy decoding)."""
        return self.config.temperature if self.config.temperature > 0 else 1.0

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def banned_ids(self) -> torch.Tensor:
        """Token ids that are never sampled (their probability is 0 in the recorded log-probabilities)."""
        return self._banned

    @property
    def sampler_state(self) -> torch.Tensor:
        """The sampling generator's state: saved with an RL checkpoint so a resumed run samples the same."""
        return self._generator.get_state()

    @sampler_state.setter
    def sampler_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    def episode_tokens(self, episode: Episode) -> EpisodeTokens | None:
        """What this policy fed and generated in `episode`, turn by turn (None: nothing yet, or not recording)."""
        state = self._states.get(episode)
        return None if state is None else state.record

    def _generate(self, states: list[_State], chunks: list[_Chunk]) -> tuple[list[list[int]], list[list[float]]]:
        dev, batch = self.device, len(states)
        n_layers = self.model.config.text_config.num_hidden_layers
        cached = [st.keys[0].shape[2] if st.keys else 0 for st in states]
        lc, lk = max(cached), max(len(c.ids) for c in chunks)
        # prefill: caches left-aligned (holes after each), new parts right-padded
        cache = _padded_cache(states, cached, lc, n_layers, dev)
        mask = torch.zeros(batch, lc + lk, dtype=torch.long, device=dev)
        ids = torch.full((batch, lk), self._pad, dtype=torch.long, device=dev)
        pos = torch.zeros(3, batch, lk, dtype=torch.long, device=dev)
        for b, (n, ch) in enumerate(zip(cached, chunks)):
            mask[b, :n] = 1
            mask[b, lc:lc + len(ch.ids)] = 1
            ids[b, :len(ch.ids)] = ch.ids.to(dev)
            pos[:, b, :len(ch.ids)] = ch.positions.to(dev)
        pixels = [p for ch in chunks for p in ch.pixel_values]
        grids = [g for ch in chunks for g in ch.grids]
        out = self.model.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
            pixel_values=torch.cat(pixels).to(dev, self.model.dtype) if pixels else None,
            image_grid_thw=torch.stack(grids).to(dev) if grids else None)
        last = torch.tensor([len(ch.ids) - 1 for ch in chunks], device=dev)
        hidden = out.last_hidden_state[torch.arange(batch, device=dev), last]
        next_pos = torch.tensor([int(ch.positions.max()) + 1 for ch in chunks], device=dev)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        finished = torch.zeros(batch, dtype=torch.bool, device=dev)
        for step in range(self.config.max_new_tokens):
            logits = self.model.lm_head(hidden).float()
            token = self._sample(logits)
            lps = (sampling_logprobs(logits, token, self._banned, self.sampling_temperature).tolist()
                   if self.config.record else [0.0] * batch)
            for b in range(batch):
                if not finished[b]:
                    tokens[b].append(int(token[b]))
                    logprobs[b].append(lps[b])
            finished |= torch.tensor([t in self._stops for t in token.tolist()], device=dev)
            if bool(finished.all()) or step == self.config.max_new_tokens - 1:
                break
            live = (~finished).long()
            mask = torch.cat([mask, live[:, None]], dim=1)
            feed = torch.where(finished, torch.full_like(token, self._pad), token)
            step_pos = next_pos.view(1, batch, 1).expand(3, batch, 1)
            out = self.model.model(input_ids=feed[:, None], attention_mask=mask, position_ids=step_pos,
                                   past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + live
        # reuse: compact each episode's cache to its own tokens; re-encoding: remember what was fed.
        # A cut-off answer's last token was never fed: it leads the next turn's part.
        for b, st in enumerate(states):
            if self.config.reuse_cache:
                keep = mask[b].nonzero().squeeze(1)
                st.keys = [cache.layers[i].keys[b:b + 1, :, keep] for i in range(n_layers)]
                st.values = [cache.layers[i].values[b:b + 1, :, keep] for i in range(n_layers)]
            else:
                fed = tokens[b][:-1]
                st.ids += fed; st.mm_types += [0] * len(fed)
            st.next_pos = int(next_pos[b])
            st.pending = [] if tokens[b] and tokens[b][-1] in self._stops else tokens[b][-1:]
        return tokens, logprobs

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        logits[:, self._banned.to(logits.device)] = float("-inf")
        if self.config.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self.config.temperature, dim=-1)
        if self.config.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(dim=-1) - sorted_p > self.config.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=self._generator).squeeze(1).to(logits.device)


def _padded_cache(states: list[_State], cached: list[int], length: int, n_layers: int, device: torch.device):
    """A DynamicCache holding each episode's keys/values left-aligned in a batch of `length` slots."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if length == 0:
        return cache
    ref = next(st for st in states if st.keys)
    for layer in range(n_layers):
        shape = (len(states), ref.keys[layer].shape[1], length, ref.keys[layer].shape[3])
        keys = torch.zeros(shape, dtype=ref.keys[layer].dtype, device=device)
        values = torch.zeros(shape, dtype=ref.values[layer].dtype, device=device)
        for b, (st, n) in enumerate(zip(states, cached)):
            if n:
                keys[b, :, :n] = st.keys[layer][0]
                values[b, :, :n] = st.values[layer][0]
        cache.update(keys, values, layer)
    return cache

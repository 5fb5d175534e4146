"""SAM2 through transformers' `Sam2Model`, with the project's own pre/post-processing.

`Sam2Processor` needs torchvision (no CPU build here), so this module does what it and Meta's
`SAM2ImagePredictor` do, with torch alone:

- image: resize (H, W) -> (1024, 1024) without keeping the aspect ratio (bilinear, antialiased),
  rescale by 1/255, normalise with the ImageNet mean/std. No padding.
- prompts: pixel coordinates are scaled by (1024 / W, 1024 / H); the model itself adds 0.5 (pixel
  centres). Boxes arrive with exclusive x1/y1 (the project's convention) and are turned into SAM's
  inclusive corners (x1 - 1, y1 - 1) before scaling, the way SAM2 derives boxes from masks.
- masks: the decoder's low-res logits (256 x 256) are upsampled bilinearly straight to (H, W) and
  thresholded at 0. Because the resize has no padding, there is nothing to crop: this is what both
  `Sam2Processor.post_process_masks` and `SAM2Transforms.postprocess_masks` do. Returned logits are
  clamped to [-32, 32] like `SAM2ImagePredictor` does before they are fed back as a mask prompt.

`set_image` runs the vision encoder once (`Sam2Model.get_image_embeddings`: the FPN features with the
"no memory" embedding, including the two high-resolution levels the decoder uses); every `predict`
runs only the prompt encoder and the mask decoder on those cached features.

Loading the real checkpoint
---------------------------
The default is the hub id `facebook/sam2.1-hiera-large` (transformers format: `config.json` +
`model.safetensors`). Without network access, download it on a machine that has it and pass the folder:

    hf download facebook/sam2.1-hiera-large --local-dir /models/sam2.1-hiera-large
    # or: python -c "from huggingface_hub import snapshot_download as d; \
    #      d('facebook/sam2.1-hiera-large', local_dir='/models/sam2.1-hiera-large')"

    from rsagent.segmenters import make_segmenter
    seg = make_segmenter("sam2", model="/models/sam2.1-hiera-large")           # or device="cuda", dtype="bfloat16"

A hub id is first looked up in the local Hugging Face cache; the hub is only contacted when it is
reachable (and `HF_HUB_OFFLINE` is not set), so a missing model fails in well under a second instead of
after transformers' retries. Meta's original `.pt` checkpoints are not in this format; convert them with
transformers' `convert_sam2_to_hf.py` (in the transformers repository) or use the hub's converted ones.

Tests and benchmarks build random-weight models from configs: `tiny_sam2_config()` (0.35 M
parameters, runs in a fraction of a second on CPU) and `sam2_config("tiny-size" | "large-size")`
(the architectures of sam2.1-hiera-tiny / -large with random weights, for timing).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rsagent.core.errors import ModelLoadError
from rsagent.core.weights import load_pretrained
from rsagent.segmenters.base import MaskPrompt, Prediction, Segmenter

DEFAULT_MODEL = "facebook/sam2.1-hiera-large"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: magnitude of the logit given to inside/outside pixels when a plain mask (no logits) is the mask prompt
MASK_PROMPT_LOGIT = 10.0
#: SAM2ImagePredictor clamps the low-res logits it hands back for re-use as a mask prompt
LOGIT_CLAMP = 32.0
# the hub's SAM2.1 checkpoints are saved as 'sam2_video' (Sam2VideoModel); Sam2Model loads their image part
_MODEL_TYPES = ("sam2", "sam2_video")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


# --------------------------------------------------------------------------- configs for tests/benches

def _hiera_vision_config(dims: list[int], blocks: list[int], heads: list[int], global_blocks: list[int],
                         windows: list[int], **extra) -> dict:
    """The `vision_config` of a SAM2 whose Hiera backbone has these per-stage sizes."""
    return {
        "model_type": "sam2_vision_model",
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": dims[0],
            "embed_dim_per_stage": dims,
            "blocks_per_stage": blocks,
            "num_attention_heads_per_stage": heads,
            "global_attention_blocks": global_blocks,
            "window_size_per_stage": windows,
            "window_positional_embedding_background_size": [7, 7],
        },
        "backbone_channel_list": dims[::-1],
        **extra,
    }


def tiny_sam2_config():
    """A tiny random SAM2 (about 0.35 M parameters) that runs the real code paths.

    Hiera embed dims [16, 32, 64, 128], blocks per stage [1, 1, 2, 1], global attention in block 3
    (a global block placed first in a stage crashes transformers' Hiera), widths 32 everywhere else.
    """
    from transformers import Sam2Config

    width = 32
    return Sam2Config(
        vision_config=_hiera_vision_config([16, 32, 64, 128], [1, 1, 2, 1], [1, 1, 2, 2], [3], [8, 4, 14, 7],
                                           fpn_hidden_size=width),
        prompt_encoder_config={"hidden_size": width},
        mask_decoder_config={"hidden_size": width, "mlp_dim": 4 * width, "num_attention_heads": 2,
                             "iou_head_hidden_dim": width},
    )


def sam2_config(size: str = "tiny"):
    """A `Sam2Config` by name: 'tiny' (the test model), 'tiny-size' / 'large-size' (the architectures
    of facebook/sam2.1-hiera-tiny / -large, as in Meta's sam2.1_hiera_{t,l}.yaml, for random-weight timing)."""
    from transformers import Sam2Config

    if size == "tiny":
        return tiny_sam2_config()
    if size == "tiny-size":
        return Sam2Config()  # transformers' defaults are sam2.1-hiera-tiny
    if size == "large-size":
        return Sam2Config(vision_config=_hiera_vision_config(
            [144, 288, 576, 1152], [2, 6, 36, 4], [2, 4, 8, 16], [23, 33, 43], [8, 4, 16, 8]))
    raise ValueError(f"unknown SAM2 config {size!r}; choose tiny, tiny-size or large-size")


# --------------------------------------------------------------------------- pure transforms

def scale_points(points: np.ndarray, shape: tuple[int, int], size: int = 1024) -> np.ndarray:
    """(N, 2) (x, y) pixel coordinates of an (H, W) image -> the model's size x size frame."""
    h, w = shape
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return pts * np.array([size / w, size / h])


def scale_box(box, shape: tuple[int, int], size: int = 1024) -> np.ndarray:
    """Box (x0, y0, x1, y1) with exclusive x1/y1 in an (H, W) image -> SAM's inclusive corners in the
    size x size frame: (x0, y0, x1 - 1, y1 - 1) scaled by (size / W, size / H)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {tuple(box)} is empty (need x1 > x0 and y1 > y0)")
    corners = np.array([[x0, y0], [max(x1 - 1.0, x0), max(y1 - 1.0, y0)]])
    return scale_points(corners, shape, size).reshape(4)


def preprocess_image(image: np.ndarray, size: int = 1024, device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, size, size) float32: resize (bilinear, antialiased), /255, ImageNet norm."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def mask_to_logits(mask: np.ndarray, size: int = 256, scale: float = MASK_PROMPT_LOGIT) -> np.ndarray:
    """A bool (H, W) mask -> a (size, size) logit-like mask prompt: +scale inside, -scale outside,
    resized the same way as the image (no aspect preservation), soft at the boundary."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=bool(m.shape[-1] > size or m.shape[-2] > size))
    return ((m[0, 0] * 2.0 - 1.0) * scale).numpy().astype(np.float32)


def upsample_logits(low_res: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) low-res logits -> (K, H, W) logits at the image size (bilinear, as SAM2's post-processing)."""
    return F.interpolate(low_res[None].float(), size=tuple(shape), mode="bilinear", align_corners=False)[0]


# --------------------------------------------------------------------------- loading

def load_sam2_model(model: str):
    """`Sam2Model.from_pretrained(model)` in float32, with a one-line `ModelLoadError` on any failure."""
    from transformers import Sam2Model
    from transformers.utils import logging as hf_logging

    how = ("pass a local folder with config.json and model.safetensors of a transformers SAM2 checkpoint "
           "(CLI: --sam2-model DIR; Python: model=DIR)")
    def load(source: str, **kwargs):
        verbosity = hf_logging.get_verbosity()
        try:
            hf_logging.set_verbosity_error()  # a cache miss, or 'sam2_video config for a sam2 model', is not news
            return Sam2Model.from_pretrained(source, dtype=torch.float32, output_loading_info=True, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)

    net, info = load_pretrained(load, model, what="SAM2 model", how=how, model_types=_MODEL_TYPES)
    missing_keys = list(info.get("missing_keys", []))
    n_params = len(net.state_dict())
    if missing_keys and len(missing_keys) > n_params // 2:
        raise ModelLoadError(f"cannot load SAM2 model {model!r}: {len(missing_keys)} of {n_params} tensors "
                             f"are missing from its weights (not a transformers SAM2 checkpoint?)")
    if missing_keys:
        warnings.warn(f"SAM2 model {model!r}: {len(missing_keys)} tensors were not in the checkpoint and are "
                      f"randomly initialised (e.g. {missing_keys[0]})", stacklevel=3)
    return net.eval()


# --------------------------------------------------------------------------- the segmenter

@dataclass
class _Encoded:
    embeddings: list[torch.Tensor]  # FPN levels, high-res first; the last is the decoder's image embedding
    shape: tuple[int, int]


class Sam2Segmenter(Segmenter):
    """SAM2 (transformers `Sam2Model`): encode once per image, then cheap prompt -> mask calls.

    model: hub id or local directory (transformers format). device: None -> cuda if available else cpu.
    dtype: 'float32' (default on CPU), or 'bfloat16' / 'float16' on cuda (autocast; weights stay float32,
    the way Meta runs SAM2). multimask: the default for `predict(multimask=None)`. mask_logit: the logit
    magnitude used when a mask prompt comes without logits.
    """

    name = "sam2"

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None,
                 cache_size: int = 8, multimask: bool = True, mask_logit: float = MASK_PROMPT_LOGIT) -> None:
        super().__init__(cache_size=cache_size)
        self.model_id = str(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if isinstance(dtype, str):
            if dtype.lower() not in _DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
            dtype = _DTYPES[dtype.lower()]
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported dtype {dtype}; choose float32, bfloat16 or float16")
        if dtype != torch.float32 and self.device.type != "cuda":
            raise ValueError(f"dtype {dtype} needs a cuda device; use float32 on {self.device.type}")
        self.dtype = dtype
        self.multimask = multimask
        self.mask_logit = float(mask_logit)
        self.model = load_sam2_model(self.model_id).to(self.device)
        cfg = self.model.config.prompt_encoder_config
        self.image_size = int(cfg.image_size)
        self.mask_size = int(self.model.prompt_encoder.mask_input_size[0])

    @property
    def identifier(self) -> str:
        return self.model_id

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def predict(self, box=None, points=None, labels=None, mask_prompt: MaskPrompt | None = None,
                multimask: bool | None = None) -> Prediction:
        """As `Segmenter.predict`; multimask=None uses the constructor's default."""
        return super().predict(box, points, labels, mask_prompt,
                               self.multimask if multimask is None else bool(multimask))

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> _Encoded:
        pixels = preprocess_image(image, self.image_size, self.device)
        with self._autocast():
            feats = self.model.get_image_embeddings(pixels)
        return _Encoded(embeddings=[f.detach() for f in feats], shape=tuple(image.shape[:2]))

    def _mask_input(self, prompt: MaskPrompt, shape: tuple[int, int]) -> torch.Tensor:
        if prompt.logits is not None:
            lg = torch.as_tensor(np.asarray(prompt.logits, np.float32))
            if lg.ndim == 3 and lg.shape[0] == 1:
                lg = lg[0]
            if lg.ndim != 2:
                raise ValueError(f"mask prompt logits must be (h, w), got {tuple(lg.shape)}")
            lg = lg[None, None]
            if lg.shape[-2:] != (self.mask_size, self.mask_size):
                down = lg.shape[-1] > self.mask_size or lg.shape[-2] > self.mask_size
                lg = F.interpolate(lg, size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False, antialias=bool(down))
        else:
            mask = np.asarray(prompt.mask)
            if mask.shape != tuple(shape):
                raise ValueError(f"mask prompt is {mask.shape}, the image is {tuple(shape)}")
            lg = torch.from_numpy(mask_to_logits(mask.astype(bool), self.mask_size, self.mask_logit))[None, None]
        return lg.to(self.device)

    @torch.inference_mode()
    def _predict(self, state: _Encoded, shape, box, points, labels, mask_prompt, multimask) -> Prediction:
        shape = tuple(int(v) for v in shape)
        kwargs: dict[str, torch.Tensor] = {}
        if points is not None and len(points) > 0:
            if not np.isin(labels, (0, 1)).all():
                raise ValueError(f"point labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
            pts = scale_points(points, shape, self.image_size)
            kwargs["input_points"] = torch.tensor(pts, dtype=torch.float32, device=self.device).view(1, 1, -1, 2)
            kwargs["input_labels"] = torch.tensor(labels, dtype=torch.int64, device=self.device).view(1, 1, -1)
        if box is not None:
            kwargs["input_boxes"] = torch.tensor(scale_box(box, shape, self.image_size), dtype=torch.float32,
                                                 device=self.device).view(1, 1, 4)
        if mask_prompt is not None:
            kwargs["input_masks"] = self._mask_input(mask_prompt, shape)
        with self._autocast():
            out = self.model(image_embeddings=state.embeddings, multimask_output=bool(multimask), **kwargs)
        low = out.pred_masks[0, 0].float()  # (K, 256, 256)
        scores = out.iou_scores[0, 0].float()  # (K,)
        order = torch.argsort(scores, descending=True)
        low, scores = low[order], scores[order]
        masks = upsample_logits(low, shape) > 0.0
        return Prediction(
            masks=masks.cpu().numpy(),
            scores=scores.cpu().numpy().astype(np.float32),
            logits=low.clamp(-LOGIT_CLAMP, LOGIT_CLAMP).cpu().numpy().astype(np.float32),
        )


__all__ = ["DEFAULT_MODEL", "Sam2Segmenter", "load_sam2_model", "mask_to_logits", "preprocess_image",
           "sam2_config", "scale_box", "scale_points", "tiny_sam2_config", "upsample_logits"]

"""Sam2Segmenter on a tiny random-weight SAM2 saved to disk and loaded back (no hub, no torchvision)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rsagent.core.errors import ModelLoadError  # noqa: E402
from rsagent.core.image import load_image  # noqa: E402
from rsagent.segmenters import make_segmenter  # noqa: E402
from rsagent.segmenters.base import MaskPrompt  # noqa: E402
from rsagent.segmenters.sam2 import (  # noqa: E402
    Sam2Segmenter,
    mask_to_logits,
    preprocess_image,
    scale_box,
    scale_points,
    tiny_sam2_config,
    upsample_logits,
)



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from transformers import Sam2Model

    torch.manual_seed(0)
    model = Sam2Model(tiny_sam2_config())
    path = tmp_path_factory.mktemp("tiny_sam2")
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def images(coco128_root: Path) -> list[np.ndarray]:
    files = sorted((coco128_root / "images" / "train2017").glob("*.jpg"))[:2]
    if len(files) < 2:
        pytest.skip(f"{coco128_root} has fewer than 2 images")
    return [load_image(f) for f in files]


@pytest.fixture(scope="module")
def seg(model_dir) -> Sam2Segmenter:
    return Sam2Segmenter(model=model_dir, device="cpu")


# ------------------------------------------------------------------ pure transforms, with numbers

def test_scale_box_640x480():
    # exclusive (64, 48, 321, 241) -> inclusive (64, 48, 320, 240) -> x * 1024/640, y * 1024/480
    out = scale_box((64, 48, 321, 241), (480, 640))
    np.testing.assert_allclose(out, [102.4, 102.4, 512.0, 512.0])
    # the whole image
    np.testing.assert_allclose(scale_box((0, 0, 640, 480), (480, 640)),
                               [0.0, 0.0, 639 * 1.6, 479 * 1024 / 480])
    # a one-pixel box keeps x1 >= x0
    np.testing.assert_allclose(scale_box((10, 10, 11, 11), (1024, 1024)), [10, 10, 10, 10])
    with pytest.raises(ValueError):
        scale_box((10, 10, 10, 20), (480, 640))


def test_scale_points_640x480():
    pts = np.array([[320, 240], [0, 0], [640, 480], [100, 300]])
    out = scale_points(pts, (480, 640))
    np.testing.assert_allclose(out, [[512, 512], [0, 0], [1024, 1024], [160, 640]])
    np.testing.assert_allclose(scale_points(np.array([[5, 7]]), (1024, 1024)), [[5, 7]])


def test_preprocess_image():
    mean = np.array([0.485, 0.456, 0.406]) * 255
    img = np.broadcast_to(np.round(mean).astype(np.uint8), (480, 640, 3)).copy()
    x = preprocess_image(img)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    assert float(x.abs().max()) < 0.01  # the ImageNet mean maps to ~0
    white = preprocess_image(np.full((10, 20, 3), 255, np.uint8))
    std = torch.tensor([0.229, 0.224, 0.225])
    expect = (1 - torch.tensor([0.485, 0.456, 0.406])) / std
    torch.testing.assert_close(white[0, :, 5, 5], expect)


def test_mask_to_logits_and_upsample():
    mask = np.zeros((480, 640), bool)
    mask[:, :320] = True
    lg = mask_to_logits(mask, 256, 10.0)
    assert lg.shape == (256, 256) and lg.dtype == np.float32
    assert lg[128, 10] == pytest.approx(10.0) and lg[128, 250] == pytest.approx(-10.0)
    up = upsample_logits(torch.from_numpy(lg)[None], (480, 640))
    assert up.shape == (1, 480, 640)
    np.testing.assert_array_equal((up[0] > 0).numpy(), mask)


# ------------------------------------------------------------------ the segmenter

def test_predict_shapes(seg, images):
    for img in images:
        seg.set_image(img)
        h, w = img.shape[:2]
        pred = seg.predict(box=(w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        assert pred.masks.shape == (3, h, w) and pred.masks.dtype == bool
        assert pred.scores.shape == (3,)
        assert np.all(np.diff(pred.scores) <= 0), "scores sorted best first"
        assert pred.logits.shape == (3, 256, 256) and pred.logits.dtype == np.float32
        np.testing.assert_array_equal(pred.masks, upsample_logits(torch.from_numpy(pred.logits), (h, w)).numpy() > 0)
        single = seg.predict(points=np.array([[w // 2, h // 2]]), labels=np.array([1]), multimask=False)
        assert single.masks.shape == (1, h, w) and single.scores.shape == (1,) and single.logits.shape == (1, 256, 256)


def test_cached_path_matches_one_shot_forward(seg, images):
    """Encoder once + decoder on cached embeddings == transformers' forward on pixel values."""
    img = images[0]
    h, w = img.shape[:2]
    box = (50, 40, 300, 260)
    seg.set_image(img)
    pred = seg.predict(box=box)
    with torch.inference_mode():
        out = seg.model(pixel_values=preprocess_image(img),
                        input_boxes=torch.tensor(scale_box(box, (h, w)), dtype=torch.float32).view(1, 1, 4))
    scores = out.iou_scores[0, 0]
    order = torch.argsort(scores, descending=True)
    np.testing.assert_allclose(pred.scores, scores[order].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.logits, out.pred_masks[0, 0][order].clamp(-32, 32).numpy(), rtol=1e-4, atol=1e-4)


def test_mask_prompt_changes_output(seg, images):
    img = images[0]
    h, w = img.shape[:2]
    seg.set_image(img)
    pts, lbl = np.array([[w // 2, h // 2], [10, 10]]), np.array([1, 0])
    first = seg.predict(points=pts, labels=lbl)
    again = seg.predict(points=pts, labels=lbl)
    np.testing.assert_array_equal(first.logits, again.logits)  # deterministic without a mask prompt
    prompt = MaskPrompt(mask=first.masks[0], logits=first.logits[0])
    with_logits = seg.predict(points=pts, labels=lbl, mask_prompt=prompt)
    assert not np.allclose(with_logits.logits, first.logits, atol=1e-4)
    with_mask = seg.predict(points=pts, labels=lbl, mask_prompt=MaskPrompt(mask=first.masks[0]))
    assert not np.allclose(with_mask.logits, first.logits, atol=1e-4)
    only_mask = seg.predict(mask_prompt=prompt)
    assert only_mask.masks.shape == (3, h, w)
    with pytest.raises(ValueError):
        seg.predict(points=pts, labels=lbl, mask_prompt=MaskPrompt(mask=np.zeros((5, 5), bool)))


def test_point_labels_validated(seg, images):
    seg.set_image(images[0])
    with pytest.raises(ValueError):
        seg.predict(points=np.array([[5, 5]]), labels=np.array([2]))


def test_cache_hit_skips_encode(model_dir, images):
    seg = Sam2Segmenter(model=model_dir, cache_size=2)
    a, b = images[0], images[1]
    seg.set_image(a, key=("a", 0))
    p1 = seg.predict(box=(10, 10, 200, 200))
    seg.set_image(b, key=("b", 0))
    assert seg.encode_count == 2
    seg.set_image(a, key=("a", 0))
    assert seg.encode_count == 2
    p2 = seg.predict(box=(10, 10, 200, 200))
    np.testing.assert_array_equal(p1.logits, p2.logits)
    assert p2.masks.shape[1:] == a.shape[:2]


def test_deterministic_across_loads(model_dir, images):
    img = images[1]
    outs = []
    for _ in range(2):
        seg = make_segmenter("sam2", model=model_dir)
        seg.set_image(img)
        outs.append(seg.predict(box=(20, 30, 220, 330), points=np.array([[100, 100]]), labels=np.array([1])))
    np.testing.assert_array_equal(outs[0].logits, outs[1].logits)
    np.testing.assert_array_equal(outs[0].scores, outs[1].scores)
    assert seg.identifier == model_dir


def _one_line(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg and "model=DIR" in msg
    assert exc.value.__cause__ is None


def test_missing_directory(tmp_path):
    path = str(tmp_path / "no_such_model")
    with pytest.raises(ModelLoadError) as exc:
        Sam2Segmenter(model=path)
    _one_line(exc, path)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_sam2_config().to_dict()))
    with pytest.raises(ModelLoadError) as exc:
        Sam2Segmenter(model=str(tmp_path))
    _one_line(exc, str(tmp_path))
    assert "model.safetensors" in str(exc.value)


def test_corrupt_weights(tmp_path, model_dir):
    (tmp_path / "config.json").write_text(Path(model_dir, "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as exc:
        Sam2Segmenter(model=str(tmp_path))
    _one_line(exc, str(tmp_path))


def test_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError) as exc:
        Sam2Segmenter(model=str(tmp_path))
    _one_line(exc, str(tmp_path))
    assert "qwen2_5_vl" in str(exc.value)


def test_loads_sam2_video_checkpoint(tmp_path, images):
    """The hub's SAM2.1 checkpoints are saved as 'sam2_video'; the image model loads from them."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    parts = tiny_sam2_config().to_dict()
    config = Sam2VideoConfig(vision_config=parts["vision_config"], prompt_encoder_config=parts["prompt_encoder_config"],
                             mask_decoder_config=parts["mask_decoder_config"], memory_attention_hidden_size=32,
                             memory_encoder_hidden_size=32, memory_encoder_output_channels=16, mem_dim=16)
    torch.manual_seed(1)
    video = Sam2VideoModel(config)
    video.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sam2_video"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = Sam2Segmenter(model=str(tmp_path))
    assert not [w for w in caught if "randomly initialised" in str(w.message)]
    saved = video.state_dict()
    for name, tensor in seg.model.state_dict().items():
        assert name in saved, name
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    seg.set_image(images[0])
    assert seg.predict(box=(10, 10, 100, 100)).masks.shape == (3, *images[0].shape[:2])


def test_unreachable_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as exc:
        Sam2Segmenter(model="rsagent-tests/no-such-sam2")
    _one_line(exc, "rsagent-tests/no-such-sam2")


def test_half_precision_needs_cuda(model_dir):
    with pytest.raises(ValueError):
        Sam2Segmenter(model=model_dir, device="cpu", dtype="bfloat16")

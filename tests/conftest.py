"""Shared fixtures: the real data in ../shared/data beside the checkout (skipped cleanly when it is absent)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

# CI clones the repo with shared/ beside it: ../shared/data relative to the checkout.
SHARED_DATA = Path(os.environ.get("RSAGENT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
COCO128 = "coco128-seg"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; tests that need it are skipped when it is absent."""
    if not (SHARED_DATA / COCO128 / "images" / "train2017").is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco128_root(shared_data: Path) -> Path:
    return shared_data / COCO128


@pytest.fixture(scope="session")
def coco128_targets(coco128_root: Path):
    """Every polygon instance of COCO128-seg (train2017), as `PolygonTarget`s, in file order."""
    from rsagent.data.yoloseg import load_yolo_seg

    with warnings.catch_warnings():
        # coco128-seg ships two label files without an image; the loader warns about them.
        warnings.simplefilter("ignore", UserWarning)
        targets = load_yolo_seg(coco128_root)
    if not targets:
        pytest.skip(f"no polygon targets under {coco128_root}")
    return targets


@pytest.fixture(scope="session")
def coco128_target(coco128_targets):
    """Look a target up by sample id (`<stem>-<line>`); skips when this copy of COCO128 lacks it."""
    by_id = {t.sample_id: t for t in coco128_targets}

    def get(sample_id: str):
        if sample_id not in by_id:
            pytest.skip(f"{sample_id} not in the COCO128 copy")
        return by_id[sample_id]

    return get


@pytest.fixture(scope="session")
def small_shapes_model(tmp_path_factory):
    """The shapes model built from a small corpus (the CLI builds the full one), saved once with its
    pixel limits: (folder, model, processor). Tests must not change the model in place."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rsagent.policies.qwen import save_model_folder
    from rsagent.shapes_model import MAX_PIXELS, build_shapes_model, corpus

    model, processor = build_shapes_model(seed=0, texts=corpus(n_samples=40, n_episodes=3))
    out = tmp_path_factory.mktemp("shapes-model")
    save_model_folder(out, model, processor, max_pixels=MAX_PIXELS)
    return out, model, processor


SYNTH_MAX_TURNS = 4  # short trajectories: short sequences on one CPU core


@pytest.fixture(scope="session")
def shapes_export(tmp_path_factory):
    """`rsagent synth` on 6 shapes scenes, grabcut, the tiny shapes model's frame (112x112 pictures)."""
    from functools import partial

    from rsagent.core.frames import make_frame
    from rsagent.eval.run import DatasetSpec
    from rsagent.segmenters import make_segmenter
    from rsagent.shapes_model import MAX_PIXELS
    from rsagent.synth.filters import FilterConfig
    from rsagent.synth.run import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth")
    config = SynthConfig(max_turns=SYNTH_MAX_TURNS, frame=make_frame("qwen2.5-vl", max_pixels=MAX_PIXELS).to_dict(),
                         filters=FilterConfig.for_segmenter("grabcut", max_turns=SYNTH_MAX_TURNS))
    stats = synthesize(DatasetSpec.create("shapes", root / "shapes", "train:6"), root / "export", config=config,
                       segmenter_factory=partial(make_segmenter, "grabcut"), progress=False, argv=["test"])
    assert stats["accepted"] >= 4
    return root / "export"

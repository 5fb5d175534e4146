"""The benchmarks' shared code (bench/common.py, the shortened model bench/gpu.py builds): quick checks of
what they compute, no timings. The benchmarks themselves are run by hand (docs/performance.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the benchmarks import each other as top-level modules
    import common

    return common


def test_table_is_markdown(common):
    assert common.table(["a", "b"], [[1, "x"], [2.5, None]]).splitlines() == [
        "| a | b |", "| --- | --- |", "| 1 | x |", "| 2.5 | None |"]


def test_machine_records_cpus_load_and_command(common):
    info = common.machine()
    assert info["cpus"] >= 1 and len(info["load"]) == 3 and info["command"]
    assert "load average" in common.describe_machine(info)


def test_shapes_tasks_enlarge_scene_and_mask_together(common):
    from rsagent.data.shapes.generate import generate

    small, = common.shapes_tasks("test", 1)
    big, = common.shapes_tasks("test", 1, size=(224, 168))
    sample = generate("test", 0)
    assert small.query == big.query == sample.query
    assert np.array_equal(small.gt.mask, sample.mask)
    assert big.image.shape == (168, 224, 3) and big.gt.mask.shape == (168, 224)
    assert big.gt.mask.mean() == pytest.approx(sample.mask.mean(), abs=0.01)  # the same share of the picture


def test_build_model_with_fewer_text_layers(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(BENCH))
    from qwen_kv_cache import build_model

    model = build_model("tiny", "cpu", torch.float32, layers=1)
    assert len(model.model.language_model.layers) == 1
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape[:2] == (1, 3)

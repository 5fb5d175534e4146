"""`--executor ray`: actors each holding one segmenter give the same summary as a local run."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
from functools import partial

import pytest
from test_eval_manifest import build_manifest, pick_targets

from rsagent.core.errors import RsagentError
from rsagent.env.episode import EpisodeConfig
from rsagent.eval import DatasetSpec, comparable, evaluate
from rsagent.policies.oracle import OraclePolicy
from rsagent.segmenters import make_segmenter


@pytest.fixture(scope="module")
def small_set(coco128_targets, tmp_path_factory):
    root = tmp_path_factory.mktemp("rayset")
    build_manifest(root, pick_targets(coco128_targets, 6), side=320)
    return root


def test_ray_matches_local(small_set, tmp_path):
    pytest.importorskip("ray")
    spec = DatasetSpec.create("manifest", small_set)
    kwargs = {"policy_factory": OraclePolicy, "segmenter_factory": partial(make_segmenter, "grabcut"),
                  "episode": EpisodeConfig(max_turns=3), "batch_size": 2, "progress": False, "report": False}
    local = evaluate(spec, tmp_path / "local", **kwargs)
    sharded = evaluate(spec, tmp_path / "ray", executor="ray", workers=2, **kwargs)
    assert sharded["run"]["executor"] == "ray" and sharded["n"] == 6
    assert comparable(sharded) == comparable(local)
    lines = (tmp_path / "ray" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["sample_id"] for x in lines) == sorted(
        json.loads(x)["sample_id"] for x in (tmp_path / "local" / "results.jsonl").read_text().splitlines())
    assert len(list((tmp_path / "ray" / "trajectories").glob("*.json"))) == 6


def test_without_ray_the_error_says_what_to_install(small_set, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RsagentError, match=r"--executor ray needs Ray: pip install rsagent\[dist\]"):
        evaluate(DatasetSpec.create("manifest", small_set), tmp_path / "o", policy_factory=OraclePolicy,
                 segmenter_factory=partial(make_segmenter, "grabcut"), executor="ray", progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_error_is_one_line_without_ray(small_set, tmp_path):
    # a Python where importing ray fails: the CLI prints one line and exits 2
    code = ("import sys; sys.modules['ray'] = None; from rsagent.cli import main; "
            f"sys.exit(main(['eval', '--dataset', 'manifest', '--root', {str(small_set)!r}, '--out', "
            f"{str(tmp_path / 'o')!r}, '--executor', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rsagent: error: --executor ray needs Ray: pip install rsagent[dist]"


def test_an_actor_that_cannot_start_is_a_one_line_error(small_set, tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(RsagentError, match="a worker failed to start: ValueError: unknown segmenter 'nope'"):
        evaluate(DatasetSpec.create("manifest", small_set, limit=2), tmp_path / "o", policy_factory=OraclePolicy,
                 segmenter_factory=partial(make_segmenter, "nope"), executor="ray", workers=1, progress=False)

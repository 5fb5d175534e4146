"""Agentic RL (`rsagent train rl`): the real tiny Qwen2.5-VL plays real episodes with grabcut on shapes;
the loss is computed on the ids it sampled. At the first step the training forward gives the sampling
log-probabilities back (ratio 1) on multi-turn episodes whose later turns carry images; runs log every
component, checkpoint, resume to the same weights and save a folder the qwen policy loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from rsagent.cli import main  # noqa: E402
from rsagent.core.errors import RsagentError  # noqa: E402
from rsagent.core.image import load_image  # noqa: E402
from rsagent.core.mask import GroundTruth, decode_rle  # noqa: E402
from rsagent.env.episode import EpisodeConfig, EpisodeTask  # noqa: E402
from rsagent.policies.qwen import QwenConfig, QwenPolicy, save_model_folder  # noqa: E402
from rsagent.policies.qwen_tokens import score_episodes  # noqa: E402
from rsagent.runner import run_episodes  # noqa: E402
from rsagent.segmenters import make_segmenter  # noqa: E402
from rsagent.shapes_model import MAX_PIXELS  # noqa: E402
from rsagent.train import RLConfig, load_rl_config, train_rl  # noqa: E402
from rsagent.train.grpo import clipped_loss, group_advantages  # noqa: E402
from rsagent.train.rl import prompts_for_step  # noqa: E402
from rsagent.train.sft_data import SFTCollator, load_rows  # noqa: E402

SMALL = dict(max_steps=2, prompts_per_step=2, group_size=3,
             max_new_tokens=120, max_turns=3, lr=1e-4, device="cpu", progress=False, gallery_steps=1,
             save_steps=1, micro_batch=2)


@pytest.fixture(scope="module")
def taught(small_shapes_model, shapes_export):
    """The small shapes model after 100 steps on one synthesized trajectory: sampling it then makes valid
    calls, so later turns show overlays. Returns (folder, model, processor, task of that trajectory)."""
    from rsagent.core.trajectory import Trajectory
    from rsagent.eval.results import safe_name

    folder, model, processor = small_shapes_model
    model = copy.deepcopy(model).train()
    # a multi-turn trajectory whose every answer is a target (a deliberate mistake would be context only)
    rows = [r for r in load_rows(shapes_export) if sum(m["role"] == "assistant" for m in r["messages"]) >= 2
            and not any(m.get("loss") is False for m in r["messages"])]
    row = rows[0]
    batch = SFTCollator(processor, shapes_export)([row])
    batch.pop("token_type_ids", None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(100):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    traj = Trajectory.load(shapes_export / "trajectories" / f"{safe_name(row['sample_id'])}.json")
    task = EpisodeTask(load_image(traj.image["path"]), traj.query, traj.sample_id)
    return folder, model, processor, task


def _sample(folder, model, processor, tasks, temperature=1.0, max_turns=4, reuse_cache=True):
    policy = QwenPolicy(QwenConfig(model=str(folder), device="cpu", max_pixels=MAX_PIXELS, temperature=temperature,
                                   max_new_tokens=120, record=True, reuse_cache=reuse_cache, seed=1),
                        model=model, processor=processor)
    records = {}
    trajs = run_episodes(policy, make_segmenter("grabcut"), tasks, EpisodeConfig(max_turns=max_turns), progress=False,
                         on_episode=lambda ep: records.__setitem__(ep.task.sample_id, policy.episode_tokens(ep)))
    return policy, trajs, [records[t.sample_id] for t in trajs]


@pytest.mark.parametrize("reuse_cache", [True, False])
def test_training_forward_gives_the_sampling_logprobs_back(taught, reuse_cache):
    folder, model, processor, task = taught
    tasks = [EpisodeTask(task.image, task.query, f"e{i}") for i in range(4)]
    policy, trajs, records = _sample(folder, model, processor, tasks, reuse_cache=reuse_cache)
    # real multi-turn episodes whose later turns fed overlay images
    later_images = sum(len(turn.grids) for rec in records for turn in rec.turns[1:])
    assert later_images >= 2
    assert any(t.tool_call and t.tool_call["name"] == "segment" and t.error is None for tr in trajs for t in tr.turns)
    # what was recorded is what the episode's text says was generated, turn by turn
    tok = processor.tokenizer
    for traj, rec in zip(trajs, records):
        assert len(rec.turns) == len(traj.turns)
        for turn, tt in zip(traj.turns, rec.turns):
            assert tok.decode([t for t in tt.generated if t not in (tok.convert_tokens_to_ids("<|im_end|>"),)]) \
                == turn.assistant
    scored = score_episodes(model, records, policy.banned_ids, policy.pad_id)
    new = torch.cat([s.logprobs for s in scored])
    old = torch.cat([s.old_logprobs for s in scored])
    assert len(new) == sum(r.n_generated for r in records) > 50
    assert torch.allclose(new, old, atol=1e-4), float((new - old).abs().max())
    ratio = torch.exp(new - old)
    assert float((ratio - 1).abs().max()) < 1e-3
    # the same tokens scored one episode at a time (no padding neighbours) agree too
    alone = score_episodes(model, records[:1], policy.banned_ids, policy.pad_id)[0]
    assert torch.allclose(alone.logprobs, scored[0].logprobs, atol=1e-4)


def test_the_loss_moves_only_the_sampled_tokens_logprobs_the_right_way(taught):
    folder, model, processor, task = taught
    net = copy.deepcopy(model)
    policy, trajs, records = _sample(folder, net, processor, [EpisodeTask(task.image, task.query, "e")], max_turns=2)
    before = torch.cat([s.logprobs for s in score_episodes(net, records, policy.banned_ids, policy.pad_id)]).detach()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.005)  # a small step: to first order the likelihood rises
    scored = score_episodes(net, records, policy.banned_ids, policy.pad_id)
    lp = torch.cat([s.logprobs for s in scored])
    parts = clipped_loss(lp, torch.cat([s.old_logprobs for s in scored]), torch.ones_like(lp), 0.2, 0.28)
    (parts.loss / len(lp)).backward()
    optimizer.step()
    after = torch.cat([s.logprobs for s in score_episodes(net, records, policy.banned_ids, policy.pad_id)]).detach()
    assert after.sum() > before.sum()  # a positive advantage makes the sampled episode more likely


def test_group_advantages_normalise_within_groups_and_skip_flat_ones():
    adv, skipped = group_advantages([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2], group_size=4)
    assert skipped == [False, True]
    # group 1: mean 0.5, population std sqrt(0.125)
    std = 0.125 ** 0.5
    assert adv[:4] == pytest.approx([0.5 / std, -0.5 / std, 0.0, 0.0], rel=1e-5)
    assert adv[4:] == [0.0] * 4
    plain, _ = group_advantages([1.0, 0.0], group_size=2, scale=False)
    assert plain == [0.5, -0.5]
    with pytest.raises(ValueError):
        group_advantages([1.0, 2.0, 3.0], group_size=2)


def test_clipped_loss_numbers():
    lp = torch.log(torch.tensor([1.5, 0.5, 1.0]))  # ratios 1.5, 0.5, 1.0 against old log-probs 0
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, 2.0])
    parts = clipped_loss(lp, old, adv, clip_low=0.2, clip_high=0.28)
    # token 1: min(1.5, 1.28) = 1.28; token 2: min(-0.5, -0.8) = -0.8; token 3: 2
    assert float(parts.loss) == pytest.approx(-(1.28 - 0.8 + 2.0), rel=1e-6)
    assert parts.clipped == 2 and parts.tokens == 3
    assert parts.ratio_max == pytest.approx(1.5)
    ref = torch.zeros(3)
    with_kl = clipped_loss(lp, old, adv, 0.2, 0.28, ref_logprobs=ref, kl_coef=0.5)
    k3 = sum(float(torch.exp(-x) + x - 1) for x in lp)
    assert float(with_kl.loss) == pytest.approx(float(parts.loss) + 0.5 * k3, rel=1e-6)
    assert with_kl.kl_sum == pytest.approx(k3, rel=1e-6)


def test_prompt_order_is_a_seeded_permutation_per_epoch():
    first = [i for step in range(1, 4) for i in prompts_for_step(6, step, 2, seed=0)]
    assert sorted(first) == list(range(6))  # one epoch: every prompt once
    assert prompts_for_step(6, 2, 2, seed=0) == first[2:4]  # a step alone draws what the sequence did
    assert first != [i for step in range(1, 4) for i in prompts_for_step(6, step, 2, seed=1)]


@pytest.fixture
def taught_folder(taught, shapes_export, tmp_path) -> tuple[Path, Path]:
    """The taught model saved as a policy folder, and an RL prompts file (synth's rl_prompts.jsonl lines)
    holding its scene twice under two ids: sampled episodes there differ in their rewards."""
    folder = tmp_path / "taught"
    _, model, processor, task = taught
    save_model_folder(folder, model, processor, 3136, MAX_PIXELS)
    lines = [json.loads(x) for x in (shapes_export / "rl_prompts.jsonl").read_text().splitlines()]
    line = next(x for x in lines if x["sample_id"] == task.sample_id)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({**line, "sample_id": f"{line['sample_id']}-{i}"}) + "\n" for i in range(2)))
    return folder, prompts


def _run(tmp_path: Path, name: str, folders: tuple[Path, Path], **changes) -> tuple[dict, Path]:
    out = tmp_path / name
    config = load_rl_config(None, model=str(folders[0]), out=str(out), prompts=str(folders[1]), **{**SMALL, **changes})
    return train_rl(config), out


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_rl_logs_every_component_checkpoints_and_saves_a_loadable_policy(taught_folder, tmp_path):
    folder = taught_folder[0]
    result, out = _run(tmp_path, "run", taught_folder, eval_steps=2, eval_dataset="shapes",
                       eval_root=str(tmp_path / "shapes"), eval_split="val:2", eval_n=2, eval_max_new_tokens=24,
                       eval_sampled=True)
    assert result["steps"] == 2
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for key in ("reward", "reward/final", "reward/process", "reward/format", "final_iou", "turns", "invalid_rate",
                "kl", "clip_fraction", "entropy", "grad_norm", "learning_rate", "groups_skipped", "seconds_rollout"):
        assert key in train_rows[0], key
    evals = [r for r in rows if "eval_rollout_gIoU" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert (out / "evals" / "step-2" / "summary.json").is_file()
    # the held-out samples also played by the sampling policy GRPO optimises, at the training temperature
    assert [r["step"] for r in rows if "eval_sampled_gIoU" in r] == [0, 2]
    sampled = json.loads((out / "evals" / "step-2-sampled" / "summary.json").read_text())
    greedy = json.loads((out / "evals" / "step-2" / "summary.json").read_text())
    assert greedy["reproduce"]["models"]["policy"].endswith(":greedy")
    assert sampled["reproduce"]["models"]["policy"].endswith(f":T={RLConfig.temperature},top_p=1.0")
    assert "Prompt 1" in (out / "gallery" / "step-1.html").read_text()
    assert (out / "log.png").stat().st_size > 1000
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert any((out / "runs").iterdir())
    # the parameters changed, and the saved folder is a policy
    start, end = _weights(folder), _weights(out)
    trained = [k for k in end if "visual" not in k]
    assert sum(r["episodes_trained"] for r in train_rows) > 0
    assert any(not torch.equal(start[k], end[k]) for k in trained)
    assert all(torch.equal(start[k], end[k]) for k in end if "visual" in k)  # freeze_vision by default
    policy = QwenPolicy(QwenConfig(model=str(out), device="cpu", max_new_tokens=8))
    assert policy.config.max_pixels == MAX_PIXELS


def test_resume_gives_the_weights_of_an_uninterrupted_run(taught_folder, tmp_path):
    folder = taught_folder
    _, straight = _run(tmp_path, "straight", folder, gallery_steps=0)
    _, parts = _run(tmp_path, "parts", folder, gallery_steps=0, max_steps=1)
    with pytest.raises(RsagentError, match="--resume"):
        _run(tmp_path, "parts", folder, gallery_steps=0)  # a used folder without --resume is refused
    with pytest.raises(RsagentError, match="lr"):
        _run(tmp_path, "parts", folder, gallery_steps=0, resume=True, lr=5e-4)  # weights-shaping change refused
    moved = parts.rename(tmp_path / "moved")  # a run folder moved (or copied) elsewhere resumes there
    _run(tmp_path, "moved", folder, gallery_steps=0, resume=True)
    a, b = _weights(straight), _weights(moved)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (moved / "log.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in log_a] == [r["reward"] for r in log_b]
    assert log_a[-1]["episodes_trained"] > 0  # the resumed step did train


def test_keep_best_ships_the_checkpoint_with_the_best_held_out_giou(taught_folder, tmp_path):
    """keep_best: the final weights are the saved step whose logged held-out gIoU is highest (the later on a
    tie), written down in final_weights.json; resuming a finished run chooses again from its log."""
    evals = dict(eval_steps=1, eval_dataset="shapes", eval_root=str(tmp_path / "shapes"), eval_split="val:2",
                 eval_n=2, eval_max_new_tokens=24, gallery_steps=0, max_steps=3, save_total_limit=None)
    result, out = _run(tmp_path, "best", taught_folder, keep_best=True, **evals)
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    giou = {r["step"]: r["eval_rollout_gIoU"] for r in rows if "eval_rollout_gIoU" in r and r["step"] > 0}
    best = max(giou, key=lambda s: (giou[s], s))
    chosen = json.loads((out / "final_weights.json").read_text())
    assert result["final_step"] == chosen["step"] == best
    assert chosen["candidates"] == {str(k): v for k, v in giou.items()}
    final = _weights(out)
    assert all(torch.equal(final[k], v) for k, v in _weights(out / f"checkpoint-{best}").items())
    # step 1 made the best by its log line: --resume on the finished run ships checkpoint-1's weights
    (out / "log.jsonl").write_text("".join(json.dumps({**r, "eval_rollout_gIoU": 2.0} if r["step"] == 1 and
                                                      "eval_rollout_gIoU" in r else r) + "\n" for r in rows))
    assert _run(tmp_path, "best", taught_folder, keep_best=True, resume=True, **evals)[0]["final_step"] == 1
    final, first, last = _weights(out), _weights(out / "checkpoint-1"), _weights(out / "checkpoint-3")
    assert all(torch.equal(final[k], v) for k, v in first.items())
    assert any(not torch.equal(final[k], v) for k, v in last.items())
    with pytest.raises(RsagentError, match="eval_steps"):
        load_rl_config(None, model="m", out="o", prompts="p", keep_best=True).check()


def test_checkpoint_rotation_keeps_the_best_step(tmp_path):
    from rsagent.train.rl_outputs import best_checkpoint
    from rsagent.train.run_dir import publish_checkpoint

    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 0, "eval_rollout_gIoU": 0.9}, {"step": 10, "eval_rollout_gIoU": 0.5}, {"step": 15, "reward": 1.0},
        {"step": 20, "eval_rollout_gIoU": 0.4}, {"step": 30, "eval_rollout_gIoU": 0.5})))
    # step 0 is no checkpoint; 10 and 30 tie, the later wins; an unsaved step is no candidate
    assert best_checkpoint(tmp_path, {10, 20, 30}) == (30, {10: 0.5, 20: 0.4, 30: 0.5})
    assert best_checkpoint(tmp_path, {10, 20})[0] == 10
    assert best_checkpoint(tmp_path, {15}) is None
    for step in (10, 20, 30):
        (tmp_path / f".tmp{step}").mkdir()
        publish_checkpoint(tmp_path, tmp_path / f".tmp{step}", step, keep=1, protect=10)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-30"]


def test_prompts_from_an_rl_prompts_file_and_clear_errors(taught, shapes_export, tmp_path, capsys):
    folder, model, processor, _ = taught
    prompts = shapes_export / "rl_prompts.jsonl"
    first = json.loads(prompts.read_text().splitlines()[0])
    from rsagent.train.rl import prompt_spec

    samples = prompt_spec(load_rl_config(None, prompts=str(prompts), model="m", out="o")).load()
    assert len(samples) == len(prompts.read_text().splitlines())
    image, gt = samples[0].load()
    assert isinstance(gt, GroundTruth)
    assert (gt.mask == decode_rle(first["mask"]).astype(bool)).all()
    assert image.shape[:2] == gt.shape
    code = main(["train", "rl", "--prompts", str(tmp_path / "nowhere.jsonl"), "--model", str(folder), "--out",
                 str(tmp_path / "x")])
    assert code == 2 and "not a dataset name" in capsys.readouterr().err
    code = main(["train", "rl", "--prompts", "shapes", "--model", str(folder), "--out", str(tmp_path / "y"),
                 "--group-size", "1"])
    assert code == 2 and "group_size" in capsys.readouterr().err


def test_two_processes_share_the_prompts_and_log_one_merged_row(taught_folder, tmp_path):
    """torchrun with 2 CPU processes (gloo): each plays its share of the groups, one logs and saves."""
    import os
    import subprocess
    import sys

    folder, prompts = taught_folder
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "rsagent.cli", "train", "rl", "--prompts", str(prompts), "--model", str(folder), "--out", str(out),
           "--max-steps", "1", "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "60",
           "--max-turns", "2", "--lr", "1e-4", "--device", "cpu", "--no-progress", "--gallery-steps", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["processes"] == 2 and rows[0]["episodes"] == 6 and rows[0]["groups"] == 2
    assert {p.name for p in (out / "checkpoint-1").glob("rl_*.pt")} == {"rl_state.pt", "rl_rank0.pt", "rl_rank1.pt"}
    assert (out / "model.safetensors").is_file()


def test_plot_runs_draws_one_curve_per_seed(tmp_path):
    from PIL import Image

    from rsagent.train.plot import plot_runs

    logs = {}
    for seed in range(2):
        path = tmp_path / f"s{seed}.jsonl"
        path.write_text("".join(json.dumps({"step": s, "eval_rollout_gIoU": 0.1 + 0.01 * s * (seed + 1)}) + "\n"
                                for s in (0, 10, 20)) + json.dumps({"step": 21, "reward": 0.3}) + "\n")
        logs[f"seed {seed}"] = path
    out = plot_runs(logs, tmp_path / "runs.png", title="two seeds")
    with Image.open(out) as im:
        assert im.size == (660, 418)
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # matplotlib's first two line colours


def test_prompts_of_excluded_kinds_are_left_out(tmp_path):
    from rsagent.train.rl import load_prompts

    base = dict(prompts="shapes", prompts_root=str(tmp_path / "shapes"), prompts_split="train:40", model="m", out="o")
    every = load_prompts(load_rl_config(None, **base))
    kept = load_prompts(load_rl_config(None, **base, exclude_kinds=["absent"]))
    absent = [s for s in every if s.meta["kind"] == "absent"]
    assert absent and len(kept) == len(every) - len(absent)
    assert all(s.meta["kind"] != "absent" and s.meta["targets"] for s in kept)
    kinds = sorted({s.meta["kind"] for s in every})
    with pytest.raises(RsagentError, match="after excluding kinds"):
        load_prompts(load_rl_config(None, **base, exclude_kinds=kinds))


def test_exclude_kinds_alone_on_the_command_line_keeps_every_kind():
    """`--exclude-kinds` with no kind overrides the shipped config's [absent]: the absent prompts come back
    (the grounded route trains on them, docs/training.md "2026-11-27 (f)")."""
    from rsagent.cli import _build_parser

    config = Path(__file__).resolve().parents[1] / "configs" / "rl_shapes_cpu.yaml"
    for given, expected in ((["--exclude-kinds"], []), ([], ["absent"]), (["--exclude-kinds", "multi", "absent"],
                                                                          ["multi", "absent"])):
        args = _build_parser().parse_args(["train", "rl", "--config", str(config)] + given)
        assert load_rl_config(args.config, exclude_kinds=args.exclude_kinds).exclude_kinds == expected


def test_the_shipped_rl_configs_load():
    configs = Path(__file__).resolve().parents[1] / "configs"
    loaded = {p.stem: load_rl_config(p) for p in sorted(configs.glob("rl_*.yaml"))}
    assert set(loaded) == {"rl_shapes_cpu", "rl_qwen7b_lora"}
    cpu, big = loaded["rl_shapes_cpu"], loaded["rl_qwen7b_lora"]
    assert cpu.device == "cpu" and cpu.segmenter == "grabcut"
    # the settings docs/training.md measured ("Q2"): targets only, KL to the SFT policy, both held-out readings
    assert cpu.exclude_kinds == ["absent"] and cpu.kl_coef == 0.05 and cpu.eval_sampled and cpu.keep_best
    assert cpu.save_steps % cpu.eval_steps == 0  # every saved step was evaluated: keep_best can pick it
    assert (cpu.prompts_per_step, cpu.group_size, cpu.max_steps) == (8, 8, 60)  # 60 since 2026-11-29 (u)
    assert big.lora and big.segmenter == "sam2" and big.prompts_per_step % 8 == 0

"""Command-line options shared by the commands that run episodes (segment, eval): which policy,
which segmenter, and how to build them. One place, so every command spells them the same way."""

from __future__ import annotations

import argparse

from rsagent.core.errors import RsagentError
from rsagent.policies.base import Policy
from rsagent.segmenters import SEGMENTERS, Segmenter, make_segmenter

POLICIES = ("oracle", "qwen", "openai", "demo")


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy")
    group.add_argument("--policy", default="oracle", choices=POLICIES,
                       help="who decides the tool calls; demo: the trained shapes agent shipped with rsagent "
                       "(qwen, greedy, as trained; CPU unless --device; knows the shapes domain only)")
    group.add_argument("--max-turns", type=int, default=8, help="turn budget per episode (default 8)")
    group.add_argument("--box-jitter", type=float, default=0.0,
                       help="oracle: std of each box edge's noise, as a fraction of the box size (default 0)")
    group.add_argument("--seed", type=int, default=0, help="oracle wording and box jitter; sampling seed")
    group.add_argument("--model", help="qwen: hub id or local folder (default Qwen/Qwen2.5-VL-7B-Instruct); "
                       "openai: the model name the server serves")
    group.add_argument("--temperature", type=float, default=0.0, help="qwen/openai: 0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0, help="qwen/openai: nucleus sampling (default 1)")
    group.add_argument("--max-new-tokens", type=int, default=512, help="qwen/openai: per answer (default 512)")
    group.add_argument("--max-pixels", type=int, default=None,
                       help="qwen/openai: pixels per image shown to the model (default 1003520 = 1280 x 28 x 28)")
    group.add_argument("--dtype", default=None, help="qwen: float32, bfloat16 or float16 (default: bf16 on cuda)")
    group.add_argument("--no-kv-reuse", action="store_true",
                       help="qwen: re-encode the whole conversation every turn (for comparison)")
    group.add_argument("--base-url", help="openai: the server's API root, e.g. http://localhost:8000/v1 "
                       "(/chat/completions is appended)")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="openai: NAME of the environment variable holding the API key (default OPENAI_API_KEY; "
                       "unset: no key is sent)")
    group.add_argument("--frame", default="qwen2.5-vl", choices=("qwen2.5-vl", "norm1000", "pixels"),
                       help="openai: coordinates the model writes (default qwen2.5-vl: pixels of the smart-resized "
                       "image; norm1000 for models trained on 0-1000 coordinates)")
    group.add_argument("--request-timeout", type=float, default=60.0, help="openai: seconds per request (default 60)")
    group.add_argument("--retries", type=int, default=3, help="openai: retries per request (default 3)")
    group.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight at once (default 8)")


def add_segmenter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("segmenter")
    group.add_argument("--segmenter", default="grabcut", choices=SEGMENTERS)
    group.add_argument("--sam2-model", default="facebook/sam2.1-hiera-large", help="hub id or local directory")
    group.add_argument("--device", default=None, help="torch device for models (default: cuda if available)")


def check_common(args: argparse.Namespace) -> None:
    if args.max_turns < 1:
        raise RsagentError(f"--max-turns must be at least 1, got {args.max_turns}")
    if not 0.0 <= args.box_jitter <= 1.0:
        raise RsagentError(f"--box-jitter must be between 0 and 1, got {args.box_jitter}")


def segmenter_kwargs(args: argparse.Namespace) -> dict:
    """What `make_segmenter(args.segmenter, **kwargs)` needs (picklable, for workers that build their own)."""
    return {"model": args.sam2_model, "device": args.device} if args.segmenter == "sam2" else {}


def build_segmenter(args: argparse.Namespace) -> Segmenter:
    return make_segmenter(args.segmenter, **segmenter_kwargs(args))


def build_policy(args: argparse.Namespace) -> Policy:
    """The policy named by --policy. The oracle needs ground truth; callers check they have it."""
    check_common(args)
    if args.policy == "oracle":
        from rsagent.policies.oracle import OracleConfig, OraclePolicy

        return OraclePolicy(OracleConfig(seed=args.seed, box_jitter=args.box_jitter))
    if args.policy == "qwen":
        from rsagent.policies.qwen import DEFAULT_MODEL, QwenConfig, QwenPolicy

        if args.max_new_tokens < 1:
            raise RsagentError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        return QwenPolicy(QwenConfig(
            model=args.model or DEFAULT_MODEL, device=args.device, dtype=args.dtype, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, max_pixels=args.max_pixels,
            reuse_cache=not args.no_kv_reuse, seed=args.seed))
    if args.policy == "demo":
        from rsagent.policies.demo_agent import demo_policy

        if args.model:
            raise RsagentError("--policy demo runs the agent shipped with rsagent; for another model folder "
                               "use --policy qwen --model DIR")
        return demo_policy(device=args.device, dtype=args.dtype, reuse_cache=not args.no_kv_reuse)
    if args.policy == "openai":
        from rsagent.policies.openai_compat import OpenAIConfig, OpenAIPolicy

        if not args.base_url or not args.model:
            raise RsagentError("--policy openai needs --base-url URL (e.g. http://localhost:8000/v1) and --model NAME")
        if args.max_new_tokens < 1:
            raise RsagentError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        policy = OpenAIPolicy(OpenAIConfig(
            base_url=args.base_url, model=args.model, api_key_env=args.api_key_env or None,
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens,
            timeout=args.request_timeout, retries=args.retries, concurrency=args.concurrency,
            frame=args.frame, max_pixels=args.max_pixels,
            seed=args.seed if args.temperature > 0 else None))  # PolicyError (an RsagentError) on bad values
        policy.check()  # an unreachable server or an unknown model is one line now, not N failed episodes
        return policy
    raise RsagentError(f"unknown policy {args.policy!r}; choose one of {', '.join(POLICIES)}")

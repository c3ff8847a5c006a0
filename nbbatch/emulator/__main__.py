"""``python -m nbbatch.emulator``: serve the emulator in the foreground until Ctrl-C.

With ``--background --state-dir DIR`` it is instead the detached background emulator
behind ``provider="local"`` (see :mod:`._background`); nbbatch starts it itself.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from . import _background
from ._emulator import start
from ._faults import TIERS
from ._quality import QUALITY_ENV, parse_quality


def _load_responder(spec: str) -> Any:
    """The function ``module:function`` names (the module imported as Python would)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(
            f"--responder {spec!r}: expected module:function, e.g. --responder mytests.fake:answer"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(
            f"--responder {spec!r}: cannot import {module_name!r} ({exc}); run from the folder "
            "that holds it or add that folder to PYTHONPATH"
        ) from exc
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise SystemExit(f"--responder {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise SystemExit(f"--responder {spec!r}: {attr!r} is not a function")
    return fn


def _quality_arg(text: str) -> dict[str, float]:
    try:
        return parse_quality(text)
    except ValueError as exc:  # argparse shows this message with the usage
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.background:
        if args.state_dir is None:
            parser.error("--background needs --state-dir")
        idle = args.idle_seconds or _background.idle_seconds()
        _background.detach()
        _background.serve(args.state_dir, args.port, idle)
        return
    emu = start(**_start_options(args))
    _print_clients(emu)
    try:
        while True:  # time.sleep, unlike a bare Event.wait(), is interrupted by Ctrl-C
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


def _parser() -> argparse.ArgumentParser:
    """The command line: where to serve, the timings and faults, the queue limits, what
    to answer with, and the background mode."""
    parser = argparse.ArgumentParser(
        prog="python -m nbbatch.emulator",
        description="Serve the nbbatch emulator of the OpenAI, Anthropic and Gemini batch APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    _add_timings_and_faults(parser)
    _add_limits(parser)
    _add_answers(parser)
    _add_background(parser)
    return parser


def _add_timings_and_faults(parser: argparse.ArgumentParser) -> None:
    """How long a batch's phases last and which faults its rows meet."""
    for name, default in (
        ("validating-seconds", 0.5),
        ("processing-seconds", 3.0),
        ("finalizing-seconds", 0.5),
        ("error-rate", 0.0),
        ("expire-rate", 0.0),
        ("missing-rate", 0.0),
        ("invalid-output-rate", 0.0),
        ("truncate-rate", 0.0),
        ("http-error-rate", 0.0),
        ("flex-latency-seconds", 0.0),
        ("flex-unavailable-rate", 0.0),
    ):
        parser.add_argument(f"--{name}", type=float, default=default)
    parser.add_argument("--fault-attempts", type=int, default=1, help="-1: every attempt")
    parser.add_argument("--no-shuffle", action="store_true")
    parser.add_argument("--seed", type=int, default=0)


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """Each provider's batch queue limits."""
    parser.add_argument(
        "--tier",
        choices=TIERS,
        default=None,
        help="apply each provider's published batch queue limits for this usage tier "
        "(default: no limits)",
    )
    parser.add_argument(
        "--enqueued-token-limit", type=int, default=None, help="OpenAI: queued tokens per model"
    )
    parser.add_argument(
        "--anthropic-queue-limit", type=int, default=None, help="Anthropic: requests queued"
    )
    parser.add_argument(
        "--anthropic-create-rate", type=int, default=None, help="Anthropic: creates per minute"
    )
    parser.add_argument(
        "--gemini-enqueued-token-limit",
        type=int,
        default=None,
        help="Gemini: queued tokens per model",
    )


def _add_answers(parser: argparse.ArgumentParser) -> None:
    """The models served and how they answer."""
    parser.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="model names to serve besides the providers' real ones (repeatable; "
        "$NBBATCH_EMULATOR_MODELS adds more)",
    )
    parser.add_argument(
        "--gemini-out-of-order",
        action="store_true",
        help="answer Gemini batches out of request order, as the service has been seen to",
    )
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="Bedrock: the S3 endpoint its jobs read input from and write output to "
        "(default $AWS_ENDPOINT_URL_S3)",
    )
    parser.add_argument(
        "--bedrock-min-records",
        type=int,
        default=100,
        help="Bedrock: the fewest records a job runs (its per-model quota's default, 100)",
    )
    parser.add_argument(
        "--responder",
        metavar="MODULE:FUNCTION",
        help="answer text and structured requests with FUNCTION(request) -> str | dict",
    )
    parser.add_argument(
        "--quality",
        type=_quality_arg,
        default=None,
        metavar="MODEL=SHARE,...",
        help="each model's share of rows that agree with the built-in answers, e.g. "
        "gpt-4o-mini=0.88,gpt-4o=0.97 (the rest get another allowed answer); with "
        f"--background: ${QUALITY_ENV}",
    )


def _add_background(parser: argparse.ArgumentParser) -> None:
    """The detached background emulator of ``provider="local"``."""
    parser.add_argument(
        "--background",
        action="store_true",
        help="run detached as the background emulator of provider='local' (needs --state-dir; "
        "uses the shared timings and no faults)",
    )
    parser.add_argument("--state-dir", type=Path, help="keep files and batches in this folder")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        help=f"with --background: exit after this long without a request "
        f"(default: ${_background.IDLE_ENV} or {_background.DEFAULT_IDLE_SECONDS:.0f})",
    )


def _start_options(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of :func:`start` the command line gives."""
    models = [n.strip() for arg in args.models for n in arg.split(",") if n.strip()]
    responder = _load_responder(args.responder) if args.responder else None
    return dict(
        host=args.host,
        port=args.port,
        validating_seconds=args.validating_seconds,
        processing_seconds=args.processing_seconds,
        finalizing_seconds=args.finalizing_seconds,
        error_rate=args.error_rate,
        expire_rate=args.expire_rate,
        missing_rate=args.missing_rate,
        invalid_output_rate=args.invalid_output_rate,
        truncate_rate=args.truncate_rate,
        http_error_rate=args.http_error_rate,
        flex_latency_seconds=args.flex_latency_seconds,
        flex_unavailable_rate=args.flex_unavailable_rate,
        fault_attempts=None if args.fault_attempts < 0 else args.fault_attempts,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        tier=args.tier,
        enqueued_token_limit=args.enqueued_token_limit,
        anthropic_queue_limit=args.anthropic_queue_limit,
        anthropic_create_rate=args.anthropic_create_rate,
        gemini_enqueued_token_limit=args.gemini_enqueued_token_limit,
        state_dir=args.state_dir,
        models=models,
        gemini_out_of_order=args.gemini_out_of_order,
        s3_endpoint=args.s3_endpoint,
        bedrock_min_records=args.bedrock_min_records,
        responder=responder,
        quality=args.quality,
    )


def _print_clients(emu: Any) -> None:
    """How to reach the emulator with each provider's SDK."""
    print(f"nbbatch emulator serving on {emu.url}", flush=True)
    print(f"  OpenAI:    OpenAI(base_url={emu.openai_base_url!r}, api_key='any')", flush=True)
    print(f"  Anthropic: Anthropic(base_url={emu.anthropic_base_url!r}, api_key='any')", flush=True)
    print(
        f"  Gemini:    genai.Client(api_key='any', "
        f"http_options={{'base_url': {emu.gemini_base_url!r}}})",
        flush=True,
    )
    print(
        f"  Bedrock:   boto3.client('bedrock', endpoint_url={emu.url + '/bedrock'!r})", flush=True
    )
    print("Press Ctrl-C to stop.", flush=True)


if __name__ == "__main__":
    main()

"""``python -m nbbatch.emulator``: serve the emulator in the foreground until Ctrl-C.

With ``--background --state-dir DIR`` it is instead the detached background emulator
behind ``provider="local"`` (see :mod:`._background`); nbbatch starts it itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import _background
from ._emulator import start
from ._quality import QUALITY_ENV, parse_quality


def _quality_arg(text: str) -> dict[str, float]:
    try:
        return parse_quality(text)
    except ValueError as exc:  # argparse shows this message with the usage
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nbbatch.emulator",
        description="Serve the nbbatch emulator of the OpenAI, Anthropic and Gemini batch APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
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
    ):
        parser.add_argument(f"--{name}", type=float, default=default)
    parser.add_argument("--fault-attempts", type=int, default=1, help="-1: every attempt")
    parser.add_argument("--no-shuffle", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enqueued-token-limit", type=int, default=None)
    parser.add_argument(
        "--quality",
        type=_quality_arg,
        default=None,
        metavar="MODEL=SHARE,...",
        help="each model's share of rows that agree with the built-in answers, e.g. "
        "gpt-4o-mini=0.88,gpt-4o=0.97 (the rest get another allowed answer); with "
        f"--background: ${QUALITY_ENV}",
    )
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
    args = parser.parse_args(argv)
    if args.background:
        if args.state_dir is None:
            parser.error("--background needs --state-dir")
        idle = args.idle_seconds or _background.idle_seconds()
        _background.detach()
        _background.serve(args.state_dir, args.port, idle)
        return
    emu = start(
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
        fault_attempts=None if args.fault_attempts < 0 else args.fault_attempts,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        enqueued_token_limit=args.enqueued_token_limit,
        state_dir=args.state_dir,
        quality=args.quality,
    )
    print(f"nbbatch emulator serving on {emu.url}", flush=True)
    print(f"  OpenAI:    OpenAI(base_url={emu.openai_base_url!r}, api_key='any')", flush=True)
    print(f"  Anthropic: Anthropic(base_url={emu.anthropic_base_url!r}, api_key='any')", flush=True)
    print(
        f"  Gemini:    genai.Client(api_key='any', "
        f"http_options={{'base_url': {emu.gemini_base_url!r}}})",
        flush=True,
    )
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while True:  # time.sleep, unlike a bare Event.wait(), is interrupted by Ctrl-C
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()

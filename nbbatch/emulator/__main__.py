"""``python -m nbbatch.emulator``: serve the emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import time

from ._emulator import start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nbbatch.emulator",
        description="Serve the nbbatch emulator of the OpenAI and Anthropic batch APIs.",
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
    args = parser.parse_args(argv)
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
    )
    print(f"nbbatch emulator serving on {emu.url}", flush=True)
    print(f"  OpenAI:    OpenAI(base_url={emu.openai_base_url!r}, api_key='any')", flush=True)
    print(f"  Anthropic: Anthropic(base_url={emu.anthropic_base_url!r}, api_key='any')", flush=True)
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

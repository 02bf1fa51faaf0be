"""`radixmesh generate PROMPT`: stream one completion from a running mesh's gRPC API.

Text goes to stdout as it arrives; a final line with the finish reason and usage goes to
stderr, so `radixmesh generate ... > out.txt` keeps only the text. Ctrl-C cancels the stream,
and the server aborts the request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from radixmesh.client import DEFAULT_ADDRESS, AsyncClient, GenerateChunk, RadixMeshClientError
from radixmesh.client.async_client import client_tls
from radixmesh.shared.api_keys import API_KEY_ENV

SAMPLING_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max_new_tokens", int, "most tokens to generate (default: the server's)"),
    ("temperature", float, "0 is greedy (default: the server's, 1.0)"),
    ("top_p", float, "nucleus sampling mass"),
    ("top_k", int, "sample among the k most likely tokens (-1: all)"),
    ("min_p", float, "drop tokens below this share of the most likely one's probability"),
    ("seed", int, "seed of this request's sampling"),
    ("frequency_penalty", float, "penalty per occurrence of a token in the output"),
    ("presence_penalty", float, "penalty for any occurrence of a token in the output"),
    ("repetition_penalty", float, "multiplicative penalty of prompt and output tokens"),
)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text (the user message with --chat)")
    parser.add_argument("--server", default=DEFAULT_ADDRESS,
                        help=f"host:port of the gRPC API (default {DEFAULT_ADDRESS})")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user message through the chat template")
    parser.add_argument("--system", default=None, help="a system message (with --chat)")
    for name, kind, help_text in SAMPLING_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=help_text)
    parser.add_argument("--stop", action="append", default=None,
                        help="a stop string (repeat for several)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    parser.add_argument("--rid", default=None, help="request id (default: a fresh one)")
    parser.add_argument("--api-key", default=None,
                        help=f"the key of a mesh started with --api-key (default: "
                             f"${API_KEY_ENV})")
    parser.add_argument("--ssl-ca-certs", default=None,
                        help="PEM CA certificates to trust: connect over TLS (a mesh started "
                             "with --ssl-certfile; `up --ssl-self-signed` prints its CA file)")
    parser.add_argument("--ssl-certfile", default=None,
                        help="PEM client certificate, for a mesh started with --ssl-cert-reqs 2")
    parser.add_argument("--ssl-keyfile", default=None, help="PEM key of --ssl-certfile")


def tls_kwargs(args: argparse.Namespace) -> dict[str, str | None]:
    """AsyncClient's TLS options from the flags; ValueError if a file cannot be used."""
    kwargs = {"ssl_ca_certs": args.ssl_ca_certs, "ssl_certfile": args.ssl_certfile,
              "ssl_keyfile": args.ssl_keyfile}
    client_tls(**kwargs)
    return kwargs


def request_kwargs(args: argparse.Namespace) -> dict:
    """AsyncClient.generate's arguments from the parsed flags."""
    kwargs: dict = {name: getattr(args, name) for name, _, _ in SAMPLING_FLAGS}
    kwargs.update(stop=args.stop, ignore_eos=args.ignore_eos or None, rid=args.rid)
    if not args.chat:
        if args.system is not None:
            raise ValueError("--system needs --chat")
        kwargs["text"] = args.prompt
        return kwargs
    messages = [] if args.system is None else [{"role": "system", "content": args.system}]
    kwargs["messages"] = [*messages, {"role": "user", "content": args.prompt}]
    return kwargs


def summary_line(last: GenerateChunk) -> str:
    finish = last.finish or {}
    reason = finish.get("type", "?")
    if "matched" in finish:
        reason += f" ({finish['matched']!r})"
    usage = last.usage or {}
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return (f"[finish: {reason}; prompt {usage.get('prompt_tokens', 0)} tokens "
            f"({cached} cached), completion {usage.get('completion_tokens', 0)} tokens]")


async def stream_to_terminal(server: str, kwargs: dict,
                             tls: dict[str, str | None] | None = None) -> GenerateChunk | None:
    last: GenerateChunk | None = None
    async with AsyncClient(server, **(tls or {})) as client:
        async for chunk in client.generate(**kwargs):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            last = chunk
    return last


def run_cli(args: argparse.Namespace) -> int:
    try:
        kwargs = request_kwargs(args)
        tls = tls_kwargs(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        last = asyncio.run(stream_to_terminal(args.server, kwargs,
                                              {**tls, "api_key": args.api_key}))
    except RadixMeshClientError as error:
        hint = {"UNAVAILABLE": f" (is the mesh running at {args.server}?)",
                "UNAUTHENTICATED": f" (pass --api-key, or set ${API_KEY_ENV})"}.get(error.code, "")
        print(f"\nerror: {error}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[cancelled]", file=sys.stderr)
        return 130
    print()
    if last is not None:
        print(summary_line(last), file=sys.stderr)
    return 0

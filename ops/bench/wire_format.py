"""Wire format: feedserve's codec (msgpack + raw numpy buffers) against JSON lists.

Featurizer workers (Celery over Redis) send tensors back to the gateway. The reference is
Celery's default serializer path: ``json.dumps`` of the message with every array turned into a
list (``.tolist()``), and on the receiving side ``json.loads`` then ``np.asarray`` back to the
array's dtype. Ours is ``feedserve.codec.encode``/``decode``.

For each payload it measures the encoded size and the encode and decode times (median and p99
over many repetitions, ``time.perf_counter_ns``, after a warm-up; ours and the reference are
interleaved rep by rep so that both see the same machine state), verifies that both round trips
give back the original arrays, prints a table with the ratios and writes
``<out>/wire_format.json`` and ``<out>/wire_format.png``.

    python ops/bench/wire_format.py            # full run, results in ops/results/
    python ops/bench/wire_format.py --quick --out /tmp/x   # a few seconds, correctness only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from _benchenv import cpu_description
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feedserve import codec
from feedserve_featurizers.hydrate import to_wire

NAME = "wire_format"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"

FULL_REPS, FULL_WARMUP = 3000, 200
QUICK_REPS, QUICK_WARMUP = 30, 3

HISTORY_LENGTHS = (128, 512, 1024)
SUMMARY_PAYLOAD = "hydrate_member_L1024"

# Shape of a hydrate_member result (featurizers/feedserve_featurizers/hydrate.py) with the
# default settings: a 256-token member prompt, the seen window (~500 distinct posts of the last
# 512 history entries) and 50 candidates from each non-embedding source.
PROMPT_TOKENS = 256
VOCAB_SIZE = 30_522  # all-MiniLM-L6-v2 (bert-base-uncased) vocabulary
SEEN_IDS = 500
SOURCE_CANDIDATES = 50
POST_ID_SPACE = 10_000_000  # post ids of a mid-sized feed corpus: 7 digits in JSON
MEMBER_ID = 4_211_977
ACTION_CODES = (2, 3, 4, 5, 6)  # engagement actions (feedserve.contracts.Action, no impression)
T_NOW = 1_767_225_600  # request time of the payload (unix seconds)
EMBED_BATCH, EMBED_DIM = 32, 384

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]


# --------------------------------------------------------------------------- payloads


def hydrate_member_payload(rng: np.random.Generator, history_len: int) -> dict[str, Any]:
    """A full-history member: every field populated, the history without left padding."""

    def post_ids(n: int) -> np.ndarray:
        return rng.integers(1, POST_ID_SPACE, size=n, dtype=np.int64)

    return to_wire(
        {
            "member_id": MEMBER_ID,
            "known": True,
            "input_ids": rng.integers(0, VOCAB_SIZE, size=PROMPT_TOKENS, dtype=np.int64),
            "seen_ids": np.unique(post_ids(SEEN_IDS)),
            "network_ids": post_ids(SOURCE_CANDIDATES),
            "popular_ids": post_ids(SOURCE_CANDIDATES),
            "fresh_ids": post_ids(SOURCE_CANDIDATES),
            "history_post_ids": post_ids(history_len),
            "history_actions": rng.choice(np.array(ACTION_CODES, dtype=np.int64), size=history_len),
            "history_timestamps": np.sort(
                T_NOW - rng.integers(0, 365 * 86_400, size=history_len, dtype=np.int64)
            ),
            "request_time": T_NOW,
        }
    )


def embeddings_payload(rng: np.random.Generator) -> dict[str, Any]:
    """A batch of unit-norm float32 embeddings (full-precision mantissas, as a model emits)."""
    emb = rng.standard_normal((EMBED_BATCH, EMBED_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return {"embeddings": emb}


def make_payloads(seed: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    payloads = {f"hydrate_member_L{n}": hydrate_member_payload(rng, n) for n in HISTORY_LENGTHS}
    payloads[f"embeddings_{EMBED_BATCH}x{EMBED_DIM}"] = embeddings_payload(rng)
    return payloads


# --------------------------------------------------------------------------- the two formats


def json_encoder() -> Encoder:
    """Celery's default path: arrays as lists, ``json.dumps``, UTF-8 bytes."""

    def encode(msg: dict[str, Any]) -> bytes:
        plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in msg.items()}
        return json.dumps(plain).encode("utf-8")

    return encode


def json_decoder(schema: dict[str, np.dtype[Any]]) -> Decoder:
    """``json.loads`` and the known array fields back to numpy with ``np.asarray``."""

    def decode(blob: bytes) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(blob)
        for key, dtype in schema.items():
            msg[key] = np.asarray(msg[key], dtype=dtype)
        return msg

    return decode


def array_schema(msg: dict[str, Any]) -> dict[str, np.dtype[Any]]:
    return {k: v.dtype for k, v in msg.items() if isinstance(v, np.ndarray)}


def field_bytes(msg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Encoded size of each array field alone: where each format spends its bytes.

    Raw int64 costs 8 bytes a value whatever the value; a JSON list costs its digits plus
    ``", "`` (3 bytes for an action code, 9 for a 7-digit post id).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in msg.items():
        if isinstance(value, np.ndarray):
            out[key] = {
                "dtype": value.dtype.name,
                "shape": list(value.shape),
                "codec": len(codec.encode(value)),
                "json": len(json.dumps(value.tolist()).encode("utf-8")),
            }
    return out


# --------------------------------------------------------------------------- verification


def verify_round_trip(original: dict[str, Any], decoded: object, method: str) -> float:
    """Assert that ``decoded`` equals ``original``; returns the largest float error (0 if none).

    Integer arrays and scalars must come back exactly (same dtype and shape); float arrays must
    be allclose to the original.
    """
    if not isinstance(decoded, dict) or set(decoded) != set(original):
        raise AssertionError(f"{method}: decoded keys differ from the original")
    max_err = 0.0
    for key, want in original.items():
        got = decoded[key]
        if not isinstance(want, np.ndarray):
            if got != want or type(got) is not type(want):
                raise AssertionError(f"{method}: {key}={got!r}, expected {want!r}")
            continue
        if not isinstance(got, np.ndarray) or got.dtype != want.dtype or got.shape != want.shape:
            raise AssertionError(f"{method}: {key} came back as {type(got).__name__} of another")
        if np.issubdtype(want.dtype, np.floating):
            if not np.allclose(got, want, rtol=1e-6, atol=1e-7):
                raise AssertionError(f"{method}: {key} floats differ beyond tolerance")
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            max_err = max(max_err, float(diff.max(initial=0.0)))
        elif not np.array_equal(got, want):
            raise AssertionError(f"{method}: {key} values differ")
    return max_err


# --------------------------------------------------------------------------- timing


@dataclass
class Samples:
    encode_ns: np.ndarray
    decode_ns: np.ndarray

    @property
    def roundtrip_ns(self) -> np.ndarray:
        return self.encode_ns + self.decode_ns


def time_interleaved(
    msg: dict[str, Any],
    methods: dict[str, tuple[Encoder, Decoder]],
    reps: int,
    warmup: int,
    advance: Callable[[int], None],
) -> dict[str, Samples]:
    """Encode+decode ``msg`` ``reps`` times with every method, alternating their order."""
    names = list(methods)
    enc_ns = {name: np.zeros(reps, dtype=np.int64) for name in names}
    dec_ns = {name: np.zeros(reps, dtype=np.int64) for name in names}
    clock = time.perf_counter_ns
    step = max(1, (reps + warmup) // 100)
    for i in range(-warmup, reps):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            encode, decode = methods[name]
            t0 = clock()
            blob = encode(msg)
            t1 = clock()
            decode(blob)
            t2 = clock()
            if i >= 0:
                enc_ns[name][i] = t1 - t0
                dec_ns[name][i] = t2 - t1
        if (i + warmup + 1) % step == 0:
            advance(step)
    advance((reps + warmup) % step)
    return {name: Samples(enc_ns[name], dec_ns[name]) for name in names}


# --------------------------------------------------------------------------- reporting


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


def build_rows(
    payloads: dict[str, dict[str, Any]],
    sizes: dict[str, dict[str, int]],
    errors: dict[str, dict[str, float]],
    samples: dict[str, dict[str, Samples]],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for payload, msg in payloads.items():
        arrays = [v for v in msg.values() if isinstance(v, np.ndarray)]
        for method, s in samples[payload].items():
            rows.append(
                {
                    "payload": payload,
                    "method": method,
                    "array_values": sum(int(a.size) for a in arrays),
                    "array_nbytes": sum(int(a.nbytes) for a in arrays),
                    "bytes": sizes[payload][method],
                    "encode_ns_median": percentile(s.encode_ns, 50),
                    "encode_ns_p99": percentile(s.encode_ns, 99),
                    "decode_ns_median": percentile(s.decode_ns, 50),
                    "decode_ns_p99": percentile(s.decode_ns, 99),
                    "roundtrip_ns_median": percentile(s.roundtrip_ns, 50),
                    "roundtrip_ns_p99": percentile(s.roundtrip_ns, 99),
                    "roundtrip_verified": True,
                    "max_abs_error": errors[payload][method],
                    "reps": len(s.encode_ns),
                }
            )
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per payload: JSON size over codec size, and JSON median round trip over codec's."""
    by = {(r["payload"], r["method"]): r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for payload in dict.fromkeys(r["payload"] for r in rows):
        ours, ref = by[(payload, "codec")], by[(payload, "json")]
        out[payload] = {
            "size_ratio_json_over_codec": ref["bytes"] / ours["bytes"],
            "speedup_codec_vs_json": ref["roundtrip_ns_median"] / ours["roundtrip_ns_median"],
            "speedup_codec_vs_json_p99": ref["roundtrip_ns_p99"] / ours["roundtrip_ns_p99"],
        }
    return out


def print_table(console: Console, rows: list[dict[str, Any]], per_payload: dict[str, Any]) -> None:
    table = Table(title="wire format: feedserve codec vs JSON lists (encode + decode)")
    for col in ("payload", "method", "size", "encode p50", "decode p50", "round trip p50/p99"):
        table.add_column(col, justify="left" if col in ("payload", "method") else "right")
    table.add_column("max err", justify="right")
    table.add_column("json/codec", justify="right", style="bold green")
    for r in rows:
        ratio = per_payload[r["payload"]]
        note = (
            f"size {ratio['size_ratio_json_over_codec']:.1f}x, "
            f"time {ratio['speedup_codec_vs_json']:.1f}x"
            if r["method"] == "json"
            else ""
        )
        table.add_row(
            r["payload"],
            r["method"],
            f"{r['bytes'] / 1024:.1f} KiB",
            f"{r['encode_ns_median'] / 1e3:.1f} µs",
            f"{r['decode_ns_median'] / 1e3:.1f} µs",
            f"{r['roundtrip_ns_median'] / 1e3:.1f} / {r['roundtrip_ns_p99'] / 1e3:.1f} µs",
            f"{r['max_abs_error']:.1e}",
            note,
        )
    console.print(table)


def plot(rows: list[dict[str, Any]], per_payload: dict[str, Any], meta: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payloads = list(per_payload)
    by = {(r["payload"], r["method"]): r for r in rows}
    x = np.arange(len(payloads))
    width = 0.38
    colors = {"codec": "#2a9d8f", "json": "#e76f51"}
    labels = {"codec": "feedserve codec", "json": "JSON lists (reference)"}
    fig, (ax_size, ax_time) = plt.subplots(1, 2, figsize=(13, 5))
    for k, method in enumerate(("codec", "json")):
        offset = (k - 0.5) * width
        size_kib = [by[(p, method)]["bytes"] / 1024 for p in payloads]
        med_us = np.array([by[(p, method)]["roundtrip_ns_median"] / 1e3 for p in payloads])
        p99_us = np.array([by[(p, method)]["roundtrip_ns_p99"] / 1e3 for p in payloads])
        ax_size.bar(x + offset, size_kib, width, label=labels[method], color=colors[method])
        ax_time.bar(
            x + offset,
            med_us,
            width,
            yerr=[np.zeros_like(med_us), p99_us - med_us],
            capsize=3,
            label=labels[method],
            color=colors[method],
        )
    for p_idx, payload in enumerate(payloads):
        ref = by[(payload, "json")]
        ax_size.annotate(
            f"{per_payload[payload]['size_ratio_json_over_codec']:.1f}x",
            (p_idx + 0.5 * width, ref["bytes"] / 1024),
            ha="center",
            va="bottom",
            fontsize=9,
        )
        ax_time.annotate(
            f"{per_payload[payload]['speedup_codec_vs_json']:.1f}x",
            (p_idx + 0.5 * width, ref["roundtrip_ns_p99"] / 1e3),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax_size.set_title("encoded size (KiB, lower is better; label = JSON ÷ codec)")
    ax_time.set_title("encode + decode (µs, log; bar = p50, whisker = p99; label = speedup)")
    ax_time.set_yscale("log")
    for ax in (ax_size, ax_time):
        ax.set_xticks(x, ["\n".join(p.rsplit("_", 1)) for p in payloads], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(f"wire format — {meta}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (correctness only)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per payload")
    parser.add_argument("--warmup", type=int, default=None, help="untimed repetitions first")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = QUICK_REPS if args.quick else FULL_REPS
    if args.warmup is None:
        args.warmup = QUICK_WARMUP if args.quick else FULL_WARMUP
    if args.reps < 1 or args.warmup < 0:
        parser.error("--reps must be ≥ 1 and --warmup ≥ 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=150)
    started = time.perf_counter()
    payloads = make_payloads(args.seed)

    sizes: dict[str, dict[str, int]] = {}
    errors: dict[str, dict[str, float]] = {}
    methods: dict[str, dict[str, tuple[Encoder, Decoder]]] = {}
    for name, msg in payloads.items():
        methods[name] = {
            "codec": (codec.encode, codec.decode),
            "json": (json_encoder(), json_decoder(array_schema(msg))),
        }
        sizes[name], errors[name] = {}, {}
        for method, (encode, decode) in methods[name].items():
            blob = encode(msg)
            sizes[name][method] = len(blob)
            errors[name][method] = verify_round_trip(msg, decode(blob), f"{name}/{method}")

    samples: dict[str, dict[str, Samples]] = {}
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=args.quick,
    ) as progress:
        for name, msg in payloads.items():
            task = progress.add_task(name, total=args.reps + args.warmup)

            def advance(n: int, task_id: Any = task) -> None:
                progress.advance(task_id, n)

            samples[name] = time_interleaved(msg, methods[name], args.reps, args.warmup, advance)

    rows = build_rows(payloads, sizes, errors, samples)
    per_payload = ratios(rows)
    summary = {"payload": SUMMARY_PAYLOAD, **per_payload[SUMMARY_PAYLOAD]}
    device = cpu_description()
    result = {
        "benchmark": NAME,
        "device": device,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "msgpack": version("msgpack"),
        "quick": args.quick,
        "reps": args.reps,
        "warmup": args.warmup,
        "seed": args.seed,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "method_notes": {
            "codec": "feedserve.codec.encode / decode (msgpack + raw little-endian buffers)",
            "json": "json.dumps of arrays as .tolist() (default separators, UTF-8), "
            "json.loads + np.asarray(dtype) per array field",
            "timing": "time.perf_counter_ns around encode and decode, methods interleaved "
            "per repetition, gc enabled; ratios use the round-trip (encode + decode) time",
        },
        "payload_notes": {
            "hydrate_member_L*": f"member_id, known, input_ids int32[{PROMPT_TOKENS}], "
            f"seen_ids int64[~{SEEN_IDS}], network/popular/fresh_ids int64"
            f"[{SOURCE_CANDIDATES}], history_post_ids int64[L], history_actions uint8[L] and "
            f"history_timestamps uint32[L] (hydrate.WIRE_DTYPES), request_time; post ids < "
            f"{POST_ID_SPACE}",
            "embeddings_*": f"float32[{EMBED_BATCH},{EMBED_DIM}], unit-norm rows",
        },
        "rows": rows,
        "ratios": per_payload,
        "field_bytes": {SUMMARY_PAYLOAD: field_bytes(payloads[SUMMARY_PAYLOAD])},
        "summary": summary,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }

    print_table(console, rows, per_payload)
    console.print(
        f"[bold]summary[/] ({SUMMARY_PAYLOAD}): JSON is "
        f"[bold]{summary['size_ratio_json_over_codec']:.2f}x[/] the codec's size; the codec's "
        f"encode+decode is [bold]{summary['speedup_codec_vs_json']:.2f}x[/] faster (median), "
        f"{summary['speedup_codec_vs_json_p99']:.2f}x at p99"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{NAME}.json"
    png_path = args.out / f"{NAME}.png"
    mode = "quick" if args.quick else f"{args.reps} reps"
    plot(rows, per_payload, f"{device}, Python {result['python']}, {mode}", png_path)
    result["elapsed_s"] = round(time.perf_counter() - started, 2)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {json_path} and {png_path} in {result['elapsed_s']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

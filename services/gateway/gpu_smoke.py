"""GPU smoke test of the trtllm backend: on a machine with an NVIDIA GPU, real generations through it.

    python services/gateway/gpu_smoke.py --model /models/Qwen2.5-0.5B-Instruct [--tp 1]
        [--wheels /media/wheels] [--runtime tensorrt --tokenizer DIR] [--no-install]

Works with no internet: `--model DIR` is a local Hugging Face checkpoint (fetched elsewhere with
`huggingface-cli download NAME --local-dir DIR`), read with HF_HUB_OFFLINE=1, and `--wheels DIR` installs
tensorrt-llm and this project's few imports from a local folder of wheels (pip --no-index; made on a
connected machine with `pip download tensorrt-llm pydantic pydantic-settings --extra-index-url
https://pypi.nvidia.com -d DIR`). Without `--wheels`, what is missing comes from NVIDIA's index. In
TensorRT-LLM's release container nothing needs installing.

Builds our TrtLlmEngine and runs a free-text completion, a JSON-schema completion (guided decoding), a stream,
and a stream dropped after its first delta (the request is aborted inside TensorRT-LLM). Prints outputs and
timings, then one line of JSON: backend, runtime, TP, tokens/s, TTFT, whether the guided JSON was valid.
Exit 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NVIDIA_INDEX = "https://pypi.nvidia.com"
LIBMPI = Path("/usr/lib/x86_64-linux-gnu/libmpi.so")
CHECKS = ("text", "guided_json", "stream", "abort")
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "reasons": {
            "type": "array",
            "items": {"type": "string", "maxLength": 60},
            "minItems": 2,
            "maxItems": 3,
        },
    },
    "required": ["city", "reasons"],
    "additionalProperties": False,
}


def log(message: str) -> None:
    print(f"[gpu-smoke {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pip_install(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", *args]
    log("$ " + " ".join(command))
    subprocess.run(command, check=True)


def ensure_installed(wheels: Path | None) -> None:
    """tensorrt-llm (it needs OpenMPI's library) and what our gateway modules import: local wheels or the index."""
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    if importlib.util.find_spec("pydantic_settings") is None:
        pip_install(*source, "pydantic>=2.9", "pydantic-settings>=2.6")
    if importlib.util.find_spec("tensorrt_llm") is not None:
        return
    if not LIBMPI.exists():
        if wheels is None and shutil.which("apt-get") and os.geteuid() == 0:
            subprocess.run(["apt-get", "install", "-y", "-q", "libopenmpi-dev"], check=False)
        else:
            log(f"warning: {LIBMPI} is missing; tensorrt_llm needs OpenMPI (apt-get install libopenmpi-dev)")
    spec = os.environ.get("SMOKE_TRTLLM_SPEC", "tensorrt-llm")
    pip_install(*(source or ["--extra-index-url", NVIDIA_INDEX]), spec)


async def smoke(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Run the checks, filling `summary` as they go (so a failure still reports what was measured)."""
    from services.gateway.backends import create_engine
    from services.gateway.engine import Completion
    from services.gateway.settings import GatewaySettings
    from swarm.contracts import ChatMessage, InferenceRequest

    def chat(system: str, user: str) -> tuple[ChatMessage, ...]:
        return ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)

    settings = GatewaySettings(
        backend="trtllm", trtllm_model=args.model, trtllm_tokenizer=args.tokenizer, trtllm_runtime=args.runtime,
        tensor_parallel_size=args.tp, trtllm_max_seq_len=4096, trtllm_max_num_tokens=4096,
        trtllm_max_batch_size=16,
    )  # fmt: skip
    started = time.perf_counter()
    engine = create_engine(settings)
    load_s = time.perf_counter() - started
    log(f"engine up: {engine.name} {engine.model} ({args.runtime}) tp={args.tp} in {load_s:.1f}s")
    summary.update(model=engine.model, load_s=round(load_s, 1))
    checks: dict[str, bool] = summary["checks"]
    try:
        request = InferenceRequest(
            request_id="smoke-1",
            messages=chat("You are terse.", "Name three rivers in Europe."),
            max_tokens=64,
            temperature=0.0,
        )
        t0 = time.perf_counter()
        completion = await engine.generate(request)
        seconds = time.perf_counter() - t0
        log(f"text: {completion.content!r}")
        log(f"text: {completion.prompt_tokens} prompt + {completion.completion_tokens} completion tokens in "
            f"{seconds * 1000:.0f} ms ({completion.completion_tokens / seconds:.0f} tok/s)")  # fmt: skip
        summary["tokens_per_s"] = round(completion.completion_tokens / seconds, 1)
        checks["text"] = bool(completion.content)

        t0 = time.perf_counter()
        structured = await engine.generate(
            request.model_copy(update={
                "request_id": "smoke-2", "json_schema": SCHEMA, "max_tokens": 160,
                "messages": chat("Answer in JSON.", "Which European city would you visit, and why?"),
            })
        )  # fmt: skip
        document = json.loads(structured.content)
        valid = isinstance(document.get("city"), str) and 2 <= len(document.get("reasons", [])) <= 3
        log(
            f"json ({'valid' if valid else 'INVALID'}) in {(time.perf_counter() - t0) * 1000:.0f} ms: {document}"
        )
        summary["guided_json_valid"] = checks["guided_json"] = valid

        t0 = time.perf_counter()
        first_token_ms = None
        deltas = 0
        final: Completion | None = None
        async for item in engine.generate_stream(request.model_copy(update={"request_id": "smoke-3"})):
            if isinstance(item, Completion):
                final = item
            else:
                deltas += 1
                first_token_ms = first_token_ms or (time.perf_counter() - t0) * 1000
        log(f"stream: {deltas} deltas, first after {first_token_ms or 0:.0f} ms, "
            f"total {(time.perf_counter() - t0) * 1000:.0f} ms: {final.content if final else None!r}")  # fmt: skip
        summary["ttft_ms"] = round(first_token_ms, 1) if first_token_ms else None
        checks["stream"] = final is not None and deltas > 0

        # A caller that goes away: close the stream after its first delta; the backend aborts the request.
        dropped = engine.generate_stream(
            request.model_copy(update={"request_id": "smoke-4", "max_tokens": 512})
        )
        first = await anext(aiter(dropped))
        await dropped.aclose()  # type: ignore[attr-defined]  # an async generator
        log(f"abort: stream closed after {first!r}; the request was aborted")
        checks["abort"] = isinstance(first, str)
    finally:
        await engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("SMOKE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct"),
                        help="local checkpoint (or engine) directory; a Hub name needs the internet")  # fmt: skip
    parser.add_argument(
        "--tokenizer", default="", help="tokenizer directory (required with --runtime tensorrt)"
    )
    parser.add_argument("--runtime", choices=["pytorch", "tensorrt"], default="pytorch")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs)")
    parser.add_argument(
        "--wheels", type=Path, help="install from this folder of wheels only (pip --no-index)"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of installing what is missing"
    )
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        log("no nvidia-smi: this machine has no NVIDIA GPU; nothing to do")
        return 2
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if Path(args.model).expanduser().is_dir():
        # Everything is local: never wait on (or fail for) a Hub that cannot be reached.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not args.no_install:
        ensure_installed(args.wheels)
    sys.path[:0] = [str(ROOT / "libs"), str(ROOT)]
    summary: dict[str, Any] = {"backend": "trtllm", "runtime": args.runtime, "tp": args.tp, "checks": {}}
    try:
        asyncio.run(smoke(args, summary))
    except Exception as exc:  # reported in the summary line, which operators collect
        log(f"error: {type(exc).__name__}: {exc}")
        summary["error"] = f"{type(exc).__name__}: {exc}"[:500]
    summary["ok"] = len(summary["checks"]) == len(CHECKS) and all(summary["checks"].values())
    log("PASS" if summary["ok"] else f"FAIL: {summary['checks']}")
    print(json.dumps(summary), flush=True)  # the one-line summary, last
    return 0 if summary["ok"] else 1


if __name__ == "__main__":  # required: TensorRT-LLM's MPI workers re-import the main module
    sys.exit(main())

"""GPU smoke test of the trtllm backend: on a machine with an NVIDIA GPU, one real generation through it.

    python services/gateway/gpu_smoke.py [--model Qwen/Qwen2.5-0.5B-Instruct] [--tp 1] [--no-install]

Installs what is missing (tensorrt-llm from NVIDIA's index, per its install docs, and this project's few
imports), builds our TrtLlmEngine with tensor parallel 1, and runs a free-text completion, a JSON-schema
completion (guided decoding) and a stream, printing outputs and timings. Exit 0 when all three worked.
The model is a Hugging Face name or a local checkpoint; the machine must reach the Hub unless it is local.
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

ROOT = Path(__file__).resolve().parents[2]
NVIDIA_INDEX = "https://pypi.nvidia.com"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "reasons": {"type": "array", "items": {"type": "string", "maxLength": 60}, "minItems": 2, "maxItems": 3},
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


def ensure_installed() -> None:
    """tensorrt-llm (NVIDIA's index; it needs OpenMPI's library) and what our gateway modules import."""
    if importlib.util.find_spec("pydantic_settings") is None:
        pip_install("pydantic>=2.9", "pydantic-settings>=2.6")
    if importlib.util.find_spec("tensorrt_llm") is None:
        if shutil.which("apt-get") and os.geteuid() == 0 and not Path("/usr/lib/x86_64-linux-gnu/libmpi.so").exists():
            subprocess.run(["apt-get", "install", "-y", "-q", "libopenmpi-dev"], check=False)
        pip_install("--extra-index-url", NVIDIA_INDEX, os.environ.get("SMOKE_TRTLLM_SPEC", "tensorrt-llm"))


async def smoke(model: str, tp: int) -> int:
    from services.gateway.engine import Completion, create_engine
    from services.gateway.settings import GatewaySettings
    from swarm.contracts import InferenceRequest
    from swarm.inference import chat

    settings = GatewaySettings(
        backend="trtllm", trtllm_model=model, tensor_parallel_size=tp, trtllm_max_seq_len=4096,
        trtllm_max_batch_size=16,
    )  # fmt: skip
    started = time.perf_counter()
    engine = create_engine(settings)
    log(f"engine up: {engine.name} {engine.model} tp={tp} in {time.perf_counter() - started:.1f}s")
    failures = 0
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
        failures += not completion.content

        t0 = time.perf_counter()
        structured = await engine.generate(
            request.model_copy(update={
                "request_id": "smoke-2", "json_schema": SCHEMA, "max_tokens": 160,
                "messages": chat("Answer in JSON.", "Which European city would you visit, and why?"),
            })
        )  # fmt: skip
        document = json.loads(structured.content)
        ok = isinstance(document.get("city"), str) and 2 <= len(document.get("reasons", [])) <= 3
        log(f"json ({'valid' if ok else 'INVALID'}) in {(time.perf_counter() - t0) * 1000:.0f} ms: {document}")
        failures += not ok

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
        failures += final is None or deltas == 0
    finally:
        await engine.close()
    log("PASS" if not failures else f"FAIL ({failures} checks)")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("SMOKE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct"))
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs)")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing what is missing")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        log("no nvidia-smi: this machine has no NVIDIA GPU; nothing to do")
        return 2
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if not args.no_install:
        ensure_installed()
    sys.path[:0] = [str(ROOT / "libs"), str(ROOT)]
    return asyncio.run(smoke(args.model, args.tp))


if __name__ == "__main__":  # required: TensorRT-LLM's MPI workers re-import the main module
    sys.exit(main())

#!/bin/sh
# One-shot job (compose service gateway-engine, compose/docker-compose.engine.yml): build the TensorRT-LLM
# engine for tensor parallel $TRTLLM_TP_SIZE from the local checkpoint $TRTLLM_MODEL_DIR (fetched by the
# gateway-model job) into $TRTLLM_ENGINE_DIR, once. An engine already there (its config.json) is kept, so
# restarting the stack does not rebuild; delete the volume (or the directory) to rebuild.
set -eu
engine_dir="${TRTLLM_ENGINE_DIR:?}"
model_dir="${TRTLLM_MODEL_DIR:?}"
if [ -f "$engine_dir/config.json" ]; then
    echo "engine present in $engine_dir; nothing to build"
    exit 0
fi
# The converter needs a local directory, never a Hub name: the fetch job must have completed.
[ -f "$model_dir/config.json" ] || { echo "no checkpoint in $model_dir: run the gateway-model job first" >&2; exit 1; }
checkpoint_dir="${engine_dir}.ckpt"
mkdir -p "$(dirname "$engine_dir")"
# The model family's convert script, from TensorRT-LLM's examples (the release image ships them).
python "${TRTLLM_CONVERT_SCRIPT:?}" --model_dir "$model_dir" --output_dir "$checkpoint_dir" \
    --dtype "${TRTLLM_DTYPE:-bfloat16}" --tp_size "${TRTLLM_TP_SIZE:-4}"
# max_num_tokens is the engine's upper bound for the gateway's SWARM_GATEWAY_TRTLLM_MAX_NUM_TOKENS; paged
# context FMHA lets the runtime prefill in chunks (SWARM_GATEWAY_TRTLLM_ENABLE_CHUNKED_PREFILL).
trtllm-build --checkpoint_dir "$checkpoint_dir" --output_dir "$engine_dir.partial" \
    --gemm_plugin auto --max_batch_size "${TRTLLM_MAX_BATCH_SIZE:-256}" --max_seq_len "${TRTLLM_MAX_SEQ_LEN:-8192}" \
    --max_num_tokens "${TRTLLM_MAX_NUM_TOKENS:-8192}" --use_paged_context_fmha enable
# Appear complete or not at all: a half-built engine never satisfies the check above.
mv "$engine_dir.partial" "$engine_dir"
rm -rf "$checkpoint_dir"
echo "engine built in $engine_dir"

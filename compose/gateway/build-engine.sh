#!/bin/sh
# One-shot job (compose service gateway-engine): build the TensorRT-LLM engine for tensor parallel
# $TRTLLM_TP_SIZE into $TRTLLM_ENGINE_DIR, once. An engine already there (its config.json) is kept, so
# restarting the stack does not rebuild; delete the volume (or the directory) to rebuild.
set -eu
engine_dir="${TRTLLM_ENGINE_DIR:?}"
if [ -f "$engine_dir/config.json" ]; then
    echo "engine present in $engine_dir; nothing to build"
    exit 0
fi
checkpoint_dir="${engine_dir}.ckpt"
# The model family's convert script, from TensorRT-LLM's examples (the release image ships them).
python "${TRTLLM_CONVERT_SCRIPT:?}" --model_dir "${TRTLLM_HF_MODEL:?}" --output_dir "$checkpoint_dir" \
    --dtype "${TRTLLM_DTYPE:-bfloat16}" --tp_size "${TRTLLM_TP_SIZE:-4}"
trtllm-build --checkpoint_dir "$checkpoint_dir" --output_dir "$engine_dir.partial" \
    --gemm_plugin auto --max_batch_size "${TRTLLM_MAX_BATCH_SIZE:-256}" --max_seq_len "${TRTLLM_MAX_SEQ_LEN:-8192}"
# Appear complete or not at all: a half-built engine never satisfies the check above.
mv "$engine_dir.partial" "$engine_dir"
rm -rf "$checkpoint_dir"
echo "engine built in $engine_dir"

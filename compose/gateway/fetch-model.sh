#!/bin/sh
# One-shot job (compose service gateway-model): download the Hugging Face checkpoint $TRTLLM_HF_MODEL at
# $TRTLLM_HF_REVISION into $TRTLLM_MODEL_DIR, once. HF_TOKEN (from compose/.env) opens gated repositories.
# Every later reader (the gateway, the engine build) uses that local directory offline. A checkpoint already
# there (its marker) is kept, so restarting the stack needs no network; delete the volume to fetch again.
set -eu
model_dir="${TRTLLM_MODEL_DIR:?}"
source_id="${TRTLLM_HF_MODEL:?}@${TRTLLM_HF_REVISION:-main}"
marker="$model_dir/.swarm-fetched"
if [ -f "$marker" ]; then
    if [ "$(cat "$marker")" = "$source_id" ]; then
        echo "checkpoint $source_id present in $model_dir; nothing to fetch"
        exit 0
    fi
    echo "$model_dir holds $(cat "$marker"), not $source_id: delete that directory to fetch this revision" >&2
    exit 1
fi
# huggingface_hub >= 0.34 names its CLI `hf` (huggingface-cli is its deprecated alias): same arguments.
if command -v hf >/dev/null; then cli=hf; else cli=huggingface-cli; fi
mkdir -p "$model_dir"
# Resumes a download that was interrupted; the token travels in HF_TOKEN, never on the command line.
# original/ holds Meta's own-format copy of the weights (as large again), which TensorRT-LLM does not read.
# One --exclude only: the older CLI keeps the last of several, the newer one reads a second value as a file.
"$cli" download "${TRTLLM_HF_MODEL}" --revision "${TRTLLM_HF_REVISION:-main}" --local-dir "$model_dir" \
    --exclude "original/*"
# A checkpoint is usable only with its config and tokenizer: check before marking it complete.
for needed in config.json tokenizer_config.json; do
    [ -f "$model_dir/$needed" ] || { echo "$source_id has no $needed: not a Hugging Face checkpoint" >&2; exit 1; }
done
echo "$source_id" > "$marker"
echo "checkpoint $source_id fetched into $model_dir"

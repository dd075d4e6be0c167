#!/usr/bin/env bash
# Serve tfsft exports with the real TensorFlow Serving (the tensorflow/serving Docker image).
#
#   scripts/serve_tfserving.sh saved_models/sentiment   # one model, every version under it (latest served)
#   scripts/serve_tfserving.sh saved_models             # every exported model, via saved_models/models.docker.config
#
# The folder is mounted read-only at /models; REST on $REST_PORT (8501), gRPC on $GRPC_PORT (8500), warm-up
# requests from assets.extra/ replayed at load; ports bound to $BIND_ADDRESS (127.0.0.1). Exported text models run TF Text ops: the serving image must
# be built against the TensorFlow version the model was exported with (printed below from export.json), so
# pick the matching tag with TFSERVING_IMAGE=tensorflow/serving:<version>. DRY_RUN=1 prints the command only.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -eq 1 && $1 != -h && $1 != --help ]] || usage

target=$(cd "$1" 2>/dev/null && pwd) || { echo "error: '$1' is not a folder; pass saved_models/<name> or saved_models" >&2; exit 2; }
image=${TFSERVING_IMAGE:-tensorflow/serving:latest}
rest_port=${REST_PORT:-8501}
grpc_port=${GRPC_PORT:-8500}

is_version_dir() { [[ -f "$1/saved_model.pb" && $(basename "$1") =~ ^[0-9]+$ ]]; }
has_versions() { for v in "$1"/*/; do is_version_dir "${v%/}" && return 0; done; return 1; }

if has_versions "$target"; then
    name=$(basename "$target")
    mount="$target:/models/$name:ro"
    server_args=(--model_name="$name" --model_base_path="/models/$name")
    exported_json=$(ls -1d "$target"/*/assets.extra/export.json 2>/dev/null | sort -V | tail -n 1 || true)
elif [[ -f "$target/models.docker.config" ]]; then
    mount="$target:/models:ro"
    server_args=(--model_config_file=/models/models.docker.config --model_config_file_poll_wait_seconds=30)
    exported_json=$(ls -1d "$target"/*/*/assets.extra/export.json 2>/dev/null | sort -V | tail -n 1 || true)
else
    echo "error: '$1' holds neither <version>/saved_model.pb folders nor a models.docker.config;" \
         "export a run first: python -m tfsft.export --run runs/<name>/<id>" >&2
    exit 2
fi

if [[ -n "${exported_json:-}" ]]; then
    echo "exported with: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("tensorflow", d.get("tensorflow"), "/ tensorflow_text", d.get("tensorflow_text", "-"))' "$exported_json")"
    echo "serving image: $image (its TensorFlow must match for models with TF Text ops)"
fi

bind=${BIND_ADDRESS:-127.0.0.1}
command=(docker run --rm -p "$bind:$rest_port:8501" -p "$bind:$grpc_port:8500" -v "$mount" "$image"
         "${server_args[@]}" --enable_model_warmup=true)
if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${command[@]}"; echo
    exit 0
fi
command -v docker >/dev/null || { echo "error: docker is not installed; 'python -m tfsft.serve' serves the same folder without it" >&2; exit 2; }
exec "${command[@]}"

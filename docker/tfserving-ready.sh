#!/usr/bin/env bash
# Readiness of TensorFlow Serving: exit 0 when every model named in a model config file has a
# version AVAILABLE, as TF Serving's REST API reports it (GET /v1/models/<name>). The
# tensorflow/serving images ship bash but neither curl nor Python, hence bash's /dev/tcp.
#
# Once ready, the models it found AVAILABLE are kept in a state file: a model registered later
# (training adds it to the config TF Serving polls) does not make a serving pod unready while it
# loads, or for good if it never loads; from its first AVAILABLE answer on it counts like the others.
#
# Usage: tfserving-ready.sh [MODEL_CONFIG_FILE]   (default /config/models.config)
# Environment: TF_SERVING_REST_PORT (default 8501), TF_SERVING_READY_TIMEOUT seconds per model (5),
# TF_SERVING_READY_STATE (default /tmp/tfserving-ready-models; unwritable: every model counts always).
set -uo pipefail

config_file="${1:-/config/models.config}"
port="${TF_SERVING_REST_PORT:-8501}"
timeout_seconds="${TF_SERVING_READY_TIMEOUT:-5}"
state_file="${TF_SERVING_READY_STATE:-/tmp/tfserving-ready-models}"

# The `name: "..."` fields of the ModelServerConfig's model_config_list (comments never match).
names=$(sed -nE "s/^[[:space:]]*name:[[:space:]]*[\"']([^\"']+)[\"'].*/\1/p" "$config_file") || exit 1
if [[ -z "$names" ]]; then
  echo "no model names in $config_file" >&2
  exit 1
fi
was_ready=$(cat "$state_file" 2>/dev/null) || was_ready=""

available() {
  if ! exec 3<>"/dev/tcp/127.0.0.1/$port"; then
    echo "TF Serving's REST API does not answer on port $port" >&2
    exit 1
  fi
  printf 'GET /v1/models/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" >&3
  # The answer is a GetModelStatusResponse in JSON: one entry per version with its "state".
  timeout "$timeout_seconds" grep -qE '"state"[[:space:]]*:[[:space:]]*"AVAILABLE"' <&3
  local found=$?
  exec 3<&-
  return $found
}

ready_models=()
for name in $names; do
  if available "$name"; then
    ready_models+=("$name")
  elif [[ -n "$was_ready" ]] && ! grep -qxF "$name" <<<"$was_ready"; then
    echo "model $name (registered since this server became ready) has no AVAILABLE version yet" >&2
  else
    echo "model $name has no AVAILABLE version yet" >&2
    exit 1
  fi
done
printf '%s\n' "${ready_models[@]}" > "$state_file" 2>/dev/null || true

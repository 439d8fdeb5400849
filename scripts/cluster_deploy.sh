#!/usr/bin/env bash
# Deploy the app on a Ray cluster: (optionally) start a head here, `serve deploy` the config,
# then wait until `serve status` says every application is RUNNING.
#
#   scripts/cluster_deploy.sh [CONFIG]          CONFIG defaults to serve_config.yaml
#
# Run it again with an edited config for a live change: a new `user_config` (batch size)
# is applied in place by `reconfigure`, new autoscaling bounds by the controller; neither
# restarts a replica. A change of `args` or of `ray_actor_options` rolls the replicas.
#
# Environment:
#   START_HEAD=1|0         start a Ray head on this machine first (default 1); 0 deploys to
#                          the cluster at RAY_DASHBOARD_ADDRESS (a head started elsewhere,
#                          `ray start --head` on a VM, the KubeRay head's port-forward)
#   RAY_HEAD_ARGS          extra `ray start --head` arguments, e.g. "--num-cpus=8 --port=6380"
#   DASHBOARD_HOST         where the head's dashboard listens (default 127.0.0.1: never expose
#                          it; it runs code for anyone who reaches it with the token)
#   DASHBOARD_PORT         (default 8265)
#   RAY_DASHBOARD_ADDRESS  the dashboard that `serve` talks to
#                          (default http://$DASHBOARD_HOST:$DASHBOARD_PORT)
#   WAIT_S                 how long to wait for RUNNING (default 600: first starts download
#                          the weights on every node)
#   PYTHON                 the interpreter of the Ray install (default: python3 beside `serve`)
#
#   RAY_AUTH_MODE          token (default) or disabled
#
# Token authentication is on by default: the head started here requires a token, and
# `serve` sends it to the dashboard (the CLI only does with RAY_AUTH_MODE=token). Ray reads
# the token from RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH, else
# ~/.ray/auth_token; when starting a head and none exists, one is generated there
# (`ray get-auth-token --generate`). Against a remote cluster, give this shell its token.
set -euo pipefail
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

config="${1:-serve_config.yaml}"
start_head="${START_HEAD:-1}"
dashboard_host="${DASHBOARD_HOST:-127.0.0.1}"
dashboard_port="${DASHBOARD_PORT:-8265}"
address="${RAY_DASHBOARD_ADDRESS:-http://${dashboard_host}:${dashboard_port}}"
wait_s="${WAIT_S:-600}"
serve_bin="$(command -v serve)" || { echo "error: no \`serve\` on PATH (pip install 'ray[serve]')" >&2; exit 2; }
python="${PYTHON:-$(dirname "$serve_bin")/python3}"
[ -x "$python" ] || python="python3"

if [ ! -f "$config" ]; then
  echo "error: no config file $config" >&2
  exit 2
fi

if [ "$start_head" = 1 ]; then
  if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
    && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
    echo "== no Ray auth token yet: generating ~/.ray/auth_token"
    ray get-auth-token --generate >/dev/null
  fi
  echo "== ray start --head (dashboard on $dashboard_host:$dashboard_port)"
  # shellcheck disable=SC2086  # RAY_HEAD_ARGS is a list of arguments
  ray start --head --dashboard-host="$dashboard_host" --dashboard-port="$dashboard_port" \
    --disable-usage-stats ${RAY_HEAD_ARGS:-}
fi

# The apps' last_deployed_time_s before this deploy: RUNNING only counts once it changed,
# so a lightweight update is not mistaken for done before the controller took it.
status_json() {
  "$serve_bin" status -a "$address" | "$python" -c \
    'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin) or {}))'
}
before="$(status_json 2>/dev/null || echo '{}')"

echo "== serve deploy $config -a $address"
"$serve_bin" deploy "$config" -a "$address"

echo "== waiting for RUNNING (up to ${wait_s} s)"
deadline=$((SECONDS + wait_s))
while :; do
  now="$(status_json || echo '{}')"
  verdict="$(BEFORE="$before" NOW="$now" CONFIG="$config" "$python" - <<'EOF'
import json, os, yaml
before = (json.loads(os.environ["BEFORE"]).get("applications") or {})
now = (json.loads(os.environ["NOW"]).get("applications") or {})
with open(os.environ["CONFIG"]) as f:
    wanted = [app.get("name", "default") for app in (yaml.safe_load(f).get("applications") or [])]
states = []
for name in wanted:
    app = now.get(name)
    if app is None:
        states.append("WAITING")
    elif app["status"] == "DEPLOY_FAILED":
        states.append("FAILED")
    elif app["status"] == "RUNNING" and (
        name not in before or app["last_deployed_time_s"] != before[name]["last_deployed_time_s"]
    ):
        states.append("RUNNING")
    else:
        states.append("WAITING")
print("FAILED" if "FAILED" in states else "RUNNING" if set(states) <= {"RUNNING"} else "WAITING")
EOF
)"
  case "$verdict" in
    RUNNING) break ;;
    FAILED)
      "$serve_bin" status -a "$address" >&2
      echo "error: deploy failed" >&2
      exit 1 ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    "$serve_bin" status -a "$address" >&2
    echo "error: not RUNNING after ${wait_s} s" >&2
    exit 1
  fi
  sleep 2
done

echo "== serve status"
"$serve_bin" status -a "$address"

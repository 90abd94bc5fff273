#!/usr/bin/env bash
# End-to-end: the real aws CLI against a real ecsd process.
#
# Covers task definitions, clusters, an error through the CLI, durability across SIGKILL,
# the data-dir lock, graceful SIGTERM, and forwarding of unimplemented operations to
# ECS_ENDPOINT_URL (answered by moto_server).
#
# Env: ECSD_BIN (default target/debug/ecsd), AWS (default .venv/bin/aws),
#      MOTO_SERVER (default: moto_server next to $AWS). hack/test sets the first two.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/../../hack/lib.sh"

ECSD_BIN=${ECSD_BIN:-$ECSD_ROOT/target/debug/ecsd}
AWS=${AWS:-$ECSD_VENV/bin/aws}
MOTO_SERVER=${MOTO_SERVER:-$(dirname "$AWS")/moto_server}
[[ -x $ECSD_BIN ]] || die "ECSD_BIN=$ECSD_BIN is not an executable (cargo build first)"
[[ -x $AWS ]] || die "AWS=$AWS is not an executable (hack/test creates the venv)"
command -v jq >/dev/null || die "jq not found (hack/setup --deps-only installs it)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ecsd-e2e.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid" 5; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=tests/e2e/lib
source "$here/lib"

fixture=$here/fixtures/taskdef-web.json
td_arn=arn:aws:ecs:$region:$account:task-definition/e2e-web

# start_ecsd NAME DATA_DIR [VAR=VALUE...]: start ecsd on a free port; sets ECSD_PID and URL.
# These checks are of the control plane, which needs no containerd: ecsd is pointed at a socket
# nobody serves, so it neither uses the host's containerd nor starts one of its own.
start_ecsd() {
  local name=$1 data=$2 line
  shift 2
  env -u ECS_ENDPOINT_URL -u ECSD_LISTEN -u ECSD_DATA_DIR \
    ECSD_CONTAINERD_ADDRESS="$data/no-containerd.sock" "$@" \
    "$ECSD_BIN" serve --listen 127.0.0.1:0 --data-dir "$data" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  ECSD_PID=$!
  PIDS+=("$ECSD_PID")
  if ! line=$(wait_for_line "$tmp/$name.out" '^ecsd listening on http://' "$ECSD_PID" 30); then
    not_ok "ecsd ($name) starts and prints its address" "stdout: $(head -c 500 "$tmp/$name.out")" \
      "stderr: $(tail -c 1500 "$tmp/$name.err")"
    echo "$pass passed, $fail failed"
    exit 1
  fi
  URL=${line#ecsd listening on }
  URL=${URL%%[[:space:]]*}
  ok "ecsd ($name) listens on $URL"
}

# wait_exit PID TIMEOUT_S: wait for PID to exit and set $rc to its exit code (124 on timeout).
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
  if pid_alive "$pid"; then
    rc=124
    return
  fi
  rc=0
  wait "$pid" || rc=$?
}

data=$tmp/data
mkdir -p "$data"

echo "# ecsd: $ECSD_BIN"
echo "# aws:  $("$AWS" --version 2>&1)"

# --- first life ------------------------------------------------------------------------------
start_ecsd first "$data"

call "list-clusters" list-clusters &&
  check "the default cluster exists from first start" "$out" \
    ".clusterArns | index(\"arn:aws:ecs:$region:$account:cluster/default\") != null"

call "register-task-definition (rev 1)" register-task-definition --cli-input-json "file://$fixture" &&
  check "register-task-definition returns revision 1, ACTIVE" "$out" \
    ".taskDefinition.revision == 1 and .taskDefinition.status == \"ACTIVE\" and .taskDefinition.taskDefinitionArn == \"$td_arn:1\""

call "describe-task-definition" describe-task-definition --task-definition e2e-web --include TAGS &&
  {
    check "describe-task-definition: revision 1, ACTIVE" "$out" \
      '.taskDefinition.revision == 1 and .taskDefinition.status == "ACTIVE" and .taskDefinition.family == "e2e-web"'
    check "describe-task-definition echoes both containers and essential" "$out" \
      '[.taskDefinition.containerDefinitions[] | {name, essential}] == [{"name":"web","essential":true},{"name":"sidecar","essential":false}]'
    check "describe-task-definition echoes portMappings and dependsOn" "$out" \
      '(.taskDefinition.containerDefinitions[0].portMappings[0].containerPort == 80) and (.taskDefinition.containerDefinitions[1].dependsOn == [{"containerName":"web","condition":"START"}])'
    check "describe-task-definition --include TAGS returns the tags" "$out" \
      '.tags == [{"key":"suite","value":"e2e"}]'
  }

call "register-task-definition (rev 2)" register-task-definition --cli-input-json "file://$fixture" &&
  check "registering the family again gives revision 2" "$out" '.taskDefinition.revision == 2'

call "list-task-definitions" list-task-definitions --family-prefix e2e-web &&
  check "list-task-definitions lists both revisions" "$out" \
    ".taskDefinitionArns == [\"$td_arn:1\", \"$td_arn:2\"]"

call "list-task-definition-families" list-task-definition-families &&
  check "list-task-definition-families contains e2e-web" "$out" '.families | index("e2e-web") != null'

call "list-tags-for-resource" list-tags-for-resource --resource-arn "$td_arn:1" &&
  check "the task definition's tags are listed" "$out" '.tags == [{"key":"suite","value":"e2e"}]'

call "create-cluster" create-cluster --cluster-name e2e &&
  check "create-cluster returns an ACTIVE cluster" "$out" \
    ".cluster.status == \"ACTIVE\" and .cluster.clusterArn == \"arn:aws:ecs:$region:$account:cluster/e2e\""

call "describe-clusters" describe-clusters --clusters e2e &&
  check "describe-clusters: e2e is ACTIVE" "$out" \
    '(.clusters | length) == 1 and .clusters[0].clusterName == "e2e" and .clusters[0].status == "ACTIVE"'

call "delete-cluster" delete-cluster --cluster e2e &&
  check "delete-cluster returns the cluster INACTIVE" "$out" '.cluster.status == "INACTIVE"'

call "describe-clusters after delete" describe-clusters --clusters e2e &&
  check "describe-clusters after delete: e2e is INACTIVE" "$out" \
    '[.clusters[] | select(.clusterName == "e2e") | .status] == ["INACTIVE"]'

rc=0
ecs describe-task-definition --task-definition e2e-missing >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
if [[ $rc == 254 || $rc == 255 ]] && grep -q ClientException "$tmp/stderr"; then
  ok "describe-task-definition of a missing family fails with ClientException (exit $rc)"
else
  not_ok "describe-task-definition of a missing family fails with ClientException" \
    "exit code $rc (want 254 or 255)" "stderr: $(head -c 1000 "$tmp/stderr")"
fi

rc=0
ecs describe-capacity-providers --capacity-providers e2e-cp >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
if ((rc != 0)) && grep -q UnknownOperationException "$tmp/stderr" && grep -q ECS_ENDPOINT_URL "$tmp/stderr"; then
  ok "an unimplemented operation without ECS_ENDPOINT_URL fails with UnknownOperationException"
else
  not_ok "an unimplemented operation without ECS_ENDPOINT_URL fails with UnknownOperationException" \
    "exit code $rc" "stderr: $(head -c 1000 "$tmp/stderr")"
fi

call "deregister-task-definition" deregister-task-definition --task-definition e2e-web:1 &&
  check "deregister-task-definition returns revision 1 INACTIVE" "$out" \
    '.taskDefinition.revision == 1 and .taskDefinition.status == "INACTIVE"'

call "list-task-definitions after deregister" list-task-definitions --family-prefix e2e-web &&
  check "list-task-definitions (ACTIVE) no longer lists revision 1" "$out" \
    ".taskDefinitionArns == [\"$td_arn:2\"]"

# A second daemon on the same data dir must refuse to start.
rc=0
timeout 20 env -u ECS_ENDPOINT_URL ECSD_CONTAINERD_ADDRESS="$data/no-containerd.sock" \
  "$ECSD_BIN" serve --listen 127.0.0.1:0 --data-dir "$data" \
  >"$tmp/second.out" 2>"$tmp/second.err" || rc=$?
if ((rc != 0 && rc != 124)) && grep -qi "already in use" "$tmp/second.err" "$tmp/second.out"; then
  ok "a second ecsd on the same data dir exits non-zero (exit $rc) saying 'already in use'"
else
  not_ok "a second ecsd on the same data dir exits non-zero saying 'already in use'" \
    "exit code $rc (124 = still running after 20 s)" "stderr: $(tail -c 1000 "$tmp/second.err")"
fi

# --- SIGKILL, then a second life on the same data dir ---------------------------------------
kill -KILL "$ECSD_PID"
wait "$ECSD_PID" 2>/dev/null || true
start_ecsd second "$data"

call "describe-task-definition e2e-web:1 after SIGKILL" describe-task-definition --task-definition e2e-web:1 &&
  check "revision 1 survived SIGKILL (INACTIVE)" "$out" \
    '.taskDefinition.revision == 1 and .taskDefinition.status == "INACTIVE"'

call "describe-task-definition e2e-web:2 after SIGKILL" describe-task-definition --task-definition e2e-web:2 &&
  check "revision 2 survived SIGKILL (ACTIVE, both containers)" "$out" \
    '.taskDefinition.revision == 2 and .taskDefinition.status == "ACTIVE" and (.taskDefinition.containerDefinitions | length) == 2'

call "list-task-definitions --status INACTIVE" list-task-definitions --family-prefix e2e-web --status INACTIVE &&
  check "list-task-definitions --status INACTIVE lists revision 1" "$out" \
    ".taskDefinitionArns == [\"$td_arn:1\"]"

call "register-task-definition (rev 3)" register-task-definition --cli-input-json "file://$fixture" &&
  check "registering after the restart gives revision 3" "$out" '.taskDefinition.revision == 3'

kill -TERM "$ECSD_PID"
wait_exit "$ECSD_PID" 20
if ((rc == 0)); then
  ok "ecsd exits 0 on SIGTERM"
else
  not_ok "ecsd exits 0 on SIGTERM" "exit code $rc (124 = still running after 20 s)" \
    "stderr: $(tail -c 1000 "$tmp/second.err")"
fi

# --- forwarding to ECS_ENDPOINT_URL (moto_server) -------------------------------------------
if [[ ! -x $MOTO_SERVER ]]; then
  not_ok "moto_server available for the forwarding checks" "MOTO_SERVER=$MOTO_SERVER is not executable"
else
  "$MOTO_SERVER" -H 127.0.0.1 -p 0 >"$tmp/moto.out" 2>&1 &
  moto_pid=$!
  PIDS+=("$moto_pid")
  if ! line=$(wait_for_line "$tmp/moto.out" 'Running on http://127\.0\.0\.1:[0-9]+' "$moto_pid" 60); then
    not_ok "moto_server starts" "$(tail -c 1000 "$tmp/moto.out")"
  else
    moto_url=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' <<<"$line")
    ok "moto_server listens on $moto_url"
    mkdir -p "$tmp/data-fwd"
    start_ecsd forward "$tmp/data-fwd" "ECS_ENDPOINT_URL=$moto_url"

    asg_arn="arn:aws:autoscaling:$region:123456789012:autoScalingGroup:00000000-0000-0000-0000-000000000000:autoScalingGroupName/e2e"
    call "create-capacity-provider through ecsd" create-capacity-provider --name e2e-cp \
      --auto-scaling-group-provider "autoScalingGroupArn=$asg_arn" &&
      check "create-capacity-provider is forwarded and answered by moto (moto's account in the ARN)" "$out" \
        '.capacityProvider.name == "e2e-cp" and (.capacityProvider.capacityProviderArn | contains(":123456789012:"))'

    call "describe-capacity-providers through ecsd" describe-capacity-providers --capacity-providers e2e-cp &&
      check "describe-capacity-providers is forwarded and answered by moto" "$out" \
        '[.capacityProviders[].name] == ["e2e-cp"] and (.capacityProviders[0].capacityProviderArn | contains(":123456789012:"))'

    call "list-clusters with forwarding on" list-clusters &&
      check "implemented operations are still answered by ecsd itself" "$out" \
        ".clusterArns | index(\"arn:aws:ecs:$region:$account:cluster/default\") != null"
  fi
fi

echo "$pass passed, $fail failed"
((fail == 0))

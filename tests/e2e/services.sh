#!/usr/bin/env bash
# End-to-end: services with the real aws CLI and its waiters against a real ecsd process that
# runs the tasks on a private containerd.
#
# create-service, update-service to a new revision, `aws ecs wait services-stable` (succeeds
# once steady, fails fast for an INACTIVE or unknown service), the service deployment APIs,
# `ecsd services`, delete-service (refused while scaled above 0, then --force) and
# `aws ecs wait services-inactive`.
#
# Needs root (containerd and its shims run tasks); hack/test runs it in the e2e tier. Without
# root it fails, unless ECSD_TEST_SKIP_ROOT=1, when it says it was skipped. Take the root
# tests' lock around it when other root tests may run: flock /tmp/ecsd-root.lock ...
#
# Env: ECSD_BIN (default target/debug/ecsd), AWS (default .venv/bin/aws).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/../../hack/lib.sh"

ECSD_BIN=${ECSD_BIN:-$ECSD_ROOT/target/debug/ecsd}
AWS=${AWS:-$ECSD_VENV/bin/aws}
[[ -x $ECSD_BIN ]] || die "ECSD_BIN=$ECSD_BIN is not an executable (cargo build first)"
[[ -x $AWS ]] || die "AWS=$AWS is not an executable (hack/test creates the venv)"
command -v jq >/dev/null || die "jq not found (hack/setup --deps-only installs it)"

if [[ $(id -u) -ne 0 ]]; then
  if [[ ${ECSD_TEST_SKIP_ROOT:-} == 1 ]]; then
    echo "# SKIPPED: the services end-to-end checks need root to run tasks (ECSD_TEST_SKIP_ROOT=1)"
    echo "0 passed, 0 failed"
    exit 0
  fi
  die "the services end-to-end checks need root to run tasks on containerd (ECSD_TEST_SKIP_ROOT=1 skips them)"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ecsd-e2e-services.XXXXXX")
containerd_dir=$tmp/containerd
ECSD_PID=
cleanup() {
  [[ -z $ECSD_PID ]] || stop_pid "$ECSD_PID" 20
  "$ECSD_ROOT/hack/containerd" stop "$containerd_dir" >/dev/null 2>&1 || true
  if mounted_under "$tmp"; then
    echo "warning: something is still mounted under $tmp; leaving it" >&2
  else
    rm -rf --one-file-system "$tmp"
  fi
}
trap cleanup EXIT

# shellcheck source=tests/e2e/lib
source "$here/lib"

# waiter NAME EXPECT(0|fail) ARGS...: runs `aws ecs wait ARGS` and checks how it ends.
waiter() {
  local name=$1 expect=$2 rc=0 started=$SECONDS
  shift 2
  timeout 600 "$AWS" ecs wait "$@" --endpoint-url "$URL" --region "$region" >"$tmp/wait.out" 2>"$tmp/wait.err" || rc=$?
  if [[ $expect == 0 && $rc == 0 ]]; then
    ok "$name ($((SECONDS - started)) s)"
  elif [[ $expect == fail && $rc != 0 && $rc != 124 ]] && grep -q "Waiter" "$tmp/wait.err"; then
    ok "$name: fails in $((SECONDS - started)) s ($(grep -o 'Waiter [A-Za-z]* failed: [^:]*' "$tmp/wait.err" | head -1))"
  else
    not_ok "$name" "aws ecs wait $* exited $rc after $((SECONDS - started)) s (want $expect)" \
      "$(head -c 1500 "$tmp/wait.err")"
  fi
}

echo "# ecsd: $ECSD_BIN"
echo "# aws:  $("$AWS" --version 2>&1)"

# A private containerd with the test image, and an ecsd on it. Tasks use the host's network, so
# nothing of the host's networking changes.
image=$("$ECSD_ROOT/hack/build-test-image")
"$ECSD_ROOT/hack/containerd" start "$containerd_dir" >/dev/null
socket=$containerd_dir/containerd.sock
"$ECSD_BIN" image import --containerd-address "$socket" --namespace e2e-services "$image" >/dev/null
data=$tmp/data
mkdir -p "$data"
env -u ECS_ENDPOINT_URL -u ECSD_LISTEN -u ECSD_DATA_DIR -u ECSD_CONFIG \
  ECSD_SERVICE_STABILIZATION=1s ECS_IMAGE_PULL_BEHAVIOR=prefer-cached ECSD_LOG_DRIVER="$ECSD_BIN" \
  "$ECSD_BIN" serve --listen 127.0.0.1:0 --data-dir "$data" --containerd-address "$socket" \
  --namespace e2e-services >"$tmp/ecsd.out" 2>"$tmp/ecsd.err" &
ECSD_PID=$!
if ! line=$(wait_for_line "$tmp/ecsd.out" '^ecsd listening on http://' "$ECSD_PID" 30); then
  not_ok "ecsd starts" "$(tail -c 1500 "$tmp/ecsd.err")"
  echo "$pass passed, $fail failed"
  exit 1
fi
URL=${line#ecsd listening on }
URL=${URL%%[[:space:]]*}
ok "ecsd listens on $URL, on a private containerd"

containers='[{"name":"app","image":"busybox","memory":32,"essential":true,
  "command":["sh","-c","trap \"exit 0\" TERM; sleep 1000 & wait"]}]'
for rev in 1 2; do
  call "register-task-definition (rev $rev)" register-task-definition --family e2e-svc --network-mode host \
    --container-definitions "$containers" &&
    check "revision $rev registered" "$out" ".taskDefinition.revision == $rev"
done
td=arn:aws:ecs:$region:$account:task-definition/e2e-svc

call "create-service" create-service --service-name web --task-definition e2e-svc:1 --desired-count 2 &&
  check "create-service: ACTIVE, one PRIMARY deployment in progress, ECS's defaults" "$out" "
    .service.serviceArn == \"arn:aws:ecs:$region:$account:service/default/web\" and .service.status == \"ACTIVE\"
    and .service.desiredCount == 2 and .service.events == []
    and (.service.deployments | length) == 1 and .service.deployments[0].status == \"PRIMARY\"
    and (.service.deployments[0].id | test(\"^ecs-svc/[0-9]{1,19}$\"))
    and .service.deployments[0].rolloutState == \"IN_PROGRESS\"
    and .service.deploymentConfiguration.maximumPercent == 200
    and .service.deploymentConfiguration.minimumHealthyPercent == 100
    and .service.launchType == \"EC2\" and .service.schedulingStrategy == \"REPLICA\""

waiter "wait services-stable after create-service" 0 services-stable --services web
# The deployment turns COMPLETED once its tasks are healthy (RUNNING for the stabilisation
# time), which may be a moment after the waiter's condition holds, as on ECS.
deadline=$((SECONDS + 60))
while call "describe-services" describe-services --services web; do
  [[ $(jq -r '.services[0].deployments[0].rolloutState' <<<"$out") == COMPLETED || $SECONDS -gt $deadline ]] && break
  sleep 0.5
done
check "steady: 2 running, the deployment COMPLETED, the steady-state event" "$out" "
    .services[0].runningCount == 2 and (.services[0].deployments | length) == 1
    and .services[0].deployments[0].rolloutState == \"COMPLETED\"
    and .services[0].events[0].message == \"(service web) has reached a steady state.\""

call "list-tasks --service-name web" list-tasks --service-name web &&
  check "list-tasks --service-name lists the 2 tasks" "$out" '(.taskArns | length) == 2'
mapfile -t task_arns < <(jq -r '.taskArns[]' <<<"$out")
call "describe-tasks" describe-tasks --tasks "${task_arns[@]}" &&
  check "the tasks carry the deployment id as startedBy and service:web as group" "$out" '
    [.tasks[] | (.startedBy | startswith("ecs-svc/")) and .group == "service:web" and .lastStatus == "RUNNING"] == [true, true]'

call "update-service --task-definition e2e-svc:2" update-service --service web --task-definition e2e-svc:2 &&
  check "update-service answers with the new PRIMARY first and the old one ACTIVE" "$out" "
    (.service.deployments | length) == 2 and .service.deployments[0].status == \"PRIMARY\"
    and .service.deployments[0].taskDefinition == \"$td:2\" and .service.deployments[1].status == \"ACTIVE\"
    and .service.deployments[1].rolloutState == \"COMPLETED\""
# The service deployment this update started (with a 1 s stabilisation it may already be over
# by the time the next call is made on a loaded machine: its status is checked after the wait).
sd=$(jq -r '.service.currentServiceDeployment // empty' <<<"$out")
call "list-service-deployments" list-service-deployments --service web &&
  check "both service deployments are listed, this update's among them" "$out" "
    (.serviceDeployments | length) == 2 and ([.serviceDeployments[].serviceDeploymentArn] | index(\"$sd\")) != null"

waiter "wait services-stable after update-service" 0 services-stable --services web
call "describe-services after the rollout" describe-services --services web &&
  check "rolled: revision 2, one deployment, 2 running" "$out" "
    .services[0].taskDefinition == \"$td:2\" and (.services[0].deployments | length) == 1
    and .services[0].runningCount == 2 and .services[0].desiredCount == 2"
if [[ -n $sd ]]; then
  # COMPLETED may lag the moment services-stable is satisfied, as on ECS.
  deadline=$((SECONDS + 60))
  while :; do
    call "describe-service-deployments" describe-service-deployments --service-deployment-arns "$sd" || break
    [[ $(jq -r '.serviceDeployments[0].status' <<<"$out") == SUCCESSFUL || $SECONDS -gt $deadline ]] && break
    sleep 1
  done
  check "the service deployment ends SUCCESSFUL (what ecspresso waits for)" "$out" \
    '.serviceDeployments[0].status == "SUCCESSFUL"'
fi
call "list-service-deployments --status IN_PROGRESS" list-service-deployments --service web --status IN_PROGRESS &&
  check "--status IN_PROGRESS lists none once both are over" "$out" '(.serviceDeployments | length) == 0'
call "list-service-deployments --status SUCCESSFUL" list-service-deployments --service web --status SUCCESSFUL &&
  check "--status SUCCESSFUL lists both" "$out" '(.serviceDeployments | length) == 2'

if table=$(AWS_ENDPOINT_URL_ECS=$URL "$ECSD_BIN" services 2>"$tmp/stderr"); then
  if grep -Eq '^web +ACTIVE +2 +2 +0 +e2e-svc:2 ' <<<"$table" && grep -q '^  PRIMARY ecs-svc/' <<<"$table"; then
    ok "ecsd services shows the service and its deployment"
  else
    not_ok "ecsd services shows the service and its deployment" "$table"
  fi
else
  not_ok "ecsd services runs" "$(cat "$tmp/stderr")"
fi

rc=0
ecs delete-service --service web >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
if ((rc != 0)) && grep -q "InvalidParameterException" "$tmp/stderr" &&
  grep -q "The service cannot be stopped while it is scaled above 0." "$tmp/stderr"; then
  ok "delete-service without --force is refused while scaled above 0"
else
  not_ok "delete-service without --force is refused while scaled above 0" "exit $rc" "$(cat "$tmp/stderr")"
fi

call "delete-service --force" delete-service --service web --force &&
  check "delete-service --force answers DRAINING" "$out" '.service.status == "DRAINING"'
waiter "wait services-inactive" 0 services-inactive --services web
call "describe-services after deletion" describe-services --services web &&
  check "the deleted service stays describable, INACTIVE, with nothing running" "$out" '
    .services[0].status == "INACTIVE" and .services[0].runningCount == 0'
call "list-services after deletion" list-services &&
  check "list-services no longer lists it" "$out" '.serviceArns == []'
waiter "wait services-stable on an INACTIVE service" fail services-stable --services web
waiter "wait services-stable on an unknown service" fail services-stable --services nope

kill -TERM "$ECSD_PID"
rc=0
wait "$ECSD_PID" || rc=$?
ECSD_PID=
if ((rc == 0)); then ok "ecsd exits 0 on SIGTERM"; else not_ok "ecsd exits 0 on SIGTERM" "exit $rc"; fi
left=$(containerd_containers "$socket")
if [[ -z $left ]]; then ok "no container is left in containerd"; else not_ok "no container is left in containerd" "$left"; fi

echo "$pass passed, $fail failed"
((fail == 0))

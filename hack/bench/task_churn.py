"""Tasks for hack/bench-api: the same running tasks in ecsd and moto_server, and churn while wrk reads.

    task_churn.py setup URL KIND N        register bench-task, run N tasks (RunTask count 10), wait
                                          until all are RUNNING; print the DescribeTasks body (10 of them)
    task_churn.py churn URL KIND RATE WINDOW
                                          until SIGTERM: every 1/RATE s RunTask one task and, once
                                          WINDOW churn tasks run, StopTask the oldest (8 workers,
                                          a tick is skipped when all are busy); then print what
                                          happened as JSON
    task_churn.py stop-all URL            StopTask every task still RUNNING, wait until all are STOPPED

KIND is ecsd or moto. moto 5.2.5 places EC2 tasks only on a registered container instance, which
must be an instance of moto's own EC2, and by default moves a task one status further on every
DescribeTasks (RUNNING, then DEACTIVATING ... STOPPED); setup makes the instance and keeps
moto's tasks RUNNING (its state manager, /moto-api), so both servers describe running tasks.

Raw HTTP on keep-alive connections (one per churn worker), like register.py in hack/bench-api:
the loader shares the machine's cores with the servers it loads, so it stays light. Neither
server checks signatures.
"""

import collections
import concurrent.futures
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse

TARGET = "AmazonEC2ContainerServiceV20141113."
AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/ecs/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64
)
FAMILY = "bench-task"
CLUSTER = "default"
# sh as pid 1 exits on SIGTERM once it traps it (a bare `sleep` as pid 1 ignores SIGTERM and
# would be killed only after stopTimeout), so a stop is one quick round through the runtime.
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class ApiError(Exception):
    def __init__(self, op, status, kind, message):
        super().__init__(f"{op}: HTTP {status} {kind}: {message}")
        self.op, self.status, self.kind = op, status, kind


class Client:
    """One keep-alive connection; reconnects once when the server closed it."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.conn = None

    def raw(self, method, path, body, headers):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def call(self, op, body):
        status, data = self.raw("POST", "/", json.dumps(body), {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": TARGET + op,
            "X-Amz-Date": "20250101T000000Z",
            "Authorization": AUTH,
        })
        if status != 200:
            try:
                err = json.loads(data)
                kind = err.get("__type", "?").rsplit("#", 1)[-1]
                message = err.get("message") or err.get("Message") or ""
            except ValueError:
                kind, message = "?", data[:300].decode(errors="replace")
            raise ApiError(op, status, kind, message)
        return json.loads(data)


def run_tasks(c, count, kind):
    body = {"cluster": CLUSTER, "taskDefinition": FAMILY, "count": count, "launchType": "EC2"}
    if kind == "ecsd":
        body["startedBy"] = "bench-api"
    r = c.call("RunTask", body)
    if r.get("failures") or len(r.get("tasks", [])) != count:
        reasons = ",".join(sorted({f.get("reason", "?") for f in r.get("failures", [])})) or "too few tasks"
        raise ApiError("RunTask", 200, f"failures({reasons})",
                       f"count={count}: {len(r.get('tasks', []))} tasks, failures {r.get('failures')}")
    return [t["taskArn"] for t in r["tasks"]]


def describe(c, arns):
    out = []
    for i in range(0, len(arns), 100):
        r = c.call("DescribeTasks", {"cluster": CLUSTER, "tasks": arns[i:i + 100]})
        if r.get("failures"):
            sys.exit(f"DescribeTasks failures: {r['failures'][:3]}")
        out += r["tasks"]
    return out


def wait_status(c, arns, status, limit):
    deadline = time.monotonic() + limit
    while True:
        ts = describe(c, arns)
        if status != "STOPPED":
            bad = [t for t in ts if t["lastStatus"] == "STOPPED"]
            if bad:
                t = bad[0]
                sys.exit(f"{len(bad)} task(s) stopped instead of {status}, e.g. {t['taskArn']}: "
                         f"{t.get('stopCode')} {t.get('stoppedReason')}")
        left = [t for t in ts if t["lastStatus"] != status]
        if not left:
            return ts
        if time.monotonic() > deadline:
            counts = collections.Counter(t["lastStatus"] for t in ts)
            sys.exit(f"not all {len(arns)} tasks {status} after {limit} s: {dict(counts)}")
        time.sleep(0.2)


def moto_instance(c):
    """An EC2 instance in moto's EC2 (query API), registered as the cluster's container instance."""
    def ec2(params):
        status, data = c.raw("POST", "/", urllib.parse.urlencode(dict(params, Version="2016-11-15")), {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Amz-Date": "20250101T000000Z",
            "Authorization": AUTH.replace("/ecs/", "/ec2/"),
        })
        if status != 200:
            sys.exit(f"moto EC2 {params['Action']}: HTTP {status}: {data[:300]!r}")
        return data.decode()

    def first(xml, tag):
        start = xml.find(f"<{tag}>")
        if start < 0:
            sys.exit(f"moto EC2 answer without <{tag}>: {xml[:300]}")
        start += len(tag) + 2
        return xml[start:xml.index(f"</{tag}>", start)]

    image = first(ec2({"Action": "DescribeImages", "Owner.1": "amazon"}), "imageId")
    instance = first(ec2({"Action": "RunInstances", "ImageId": image, "MinCount": "1", "MaxCount": "1",
                          "InstanceType": "m5.large"}), "instanceId")
    c.call("RegisterContainerInstance", {
        "cluster": CLUSTER, "instanceIdentityDocument": json.dumps({"instanceId": instance}),
    })
    status, data = c.raw("POST", "/moto-api/state-manager/set-transition", json.dumps({
        "model_name": "ecs::task", "transition": {"progression": "manual", "times": 10 ** 9},
    }), {"Content-Type": "application/json"})
    if status not in (200, 201):
        sys.exit(f"moto set-transition: HTTP {status}: {data[:300]!r}")


def setup(url, kind, n):
    c = Client(url)
    if kind == "moto":
        c.call("CreateCluster", {"clusterName": CLUSTER})
        moto_instance(c)
    c.call("RegisterTaskDefinition", {
        "family": FAMILY, "networkMode": "none",
        # moto needs container-level memory (HTTP 500 without) and sums cpu for placement.
        "containerDefinitions": [{
            "name": "app", "image": "busybox", "essential": True, "memory": 16, "cpu": 8,
            "stopTimeout": 2, "command": COMMAND,
        }],
    })
    t0 = time.monotonic()
    arns = []
    for _ in range(n // 10):
        arns += run_tasks(c, 10, kind)
    wait_status(c, arns, "RUNNING", 600)
    log(f"{kind}: {n} tasks RUNNING after {time.monotonic() - t0:.1f} s")
    pick = arns[::n // 10][:10]
    print(json.dumps({"cluster": CLUSTER, "tasks": pick}, separators=(",", ":")))


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def churn(url, kind, rate, window, workers=8):
    stop = False

    def on_term(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    period = 1.0 / rate
    lock = threading.Lock()
    local = threading.local()
    live = collections.deque()
    stopped, lat = [], {"RunTask": [], "StopTask": []}
    errors = collections.Counter()
    first_error = {}
    missed = starts = inflight = 0
    # The window fills first (starts only); from the first stop on, the churn is steady: both
    # rates are counted from then, and stderr says so for the caller to start measuring.
    steady_at = None

    def timed(op, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        except ApiError as e:
            key, text = f"{op} HTTP {e.status} {e.kind}", str(e)
        except (OSError, http.client.HTTPException) as e:
            key, text = f"{op} {type(e).__name__}", str(e)
        finally:
            lat[op].append(time.perf_counter() - t0)
        with lock:
            errors[key] += 1
            first_error.setdefault(key, text[:300])
        return None

    def one_tick():
        """RunTask of one task, then StopTask of the oldest churn task once the window is full."""
        nonlocal starts, inflight, steady_at
        try:
            if not hasattr(local, "client"):
                local.client = Client(url)
            c = local.client
            arns = timed("RunTask", lambda: run_tasks(c, 1, kind))
            victim = None
            with lock:
                if arns:
                    live.append(arns[0])
                    if steady_at is None and len(live) > window:
                        steady_at = time.monotonic()
                        log(f"churn steady: {window} churn tasks live")
                    if steady_at is not None:
                        starts += 1
                if len(live) > window:
                    victim = live.popleft()
            if victim is not None:
                body = {"cluster": CLUSTER, "task": victim, "reason": "bench-api churn"}
                if timed("StopTask", lambda: c.call("StopTask", body)) is not None:
                    with lock:
                        stopped.append(victim)
        except Exception as e:  # a worker's surprise must show in the report, not vanish in its future
            with lock:
                errors[f"loader {type(e).__name__}"] += 1
                first_error.setdefault(f"loader {type(e).__name__}", repr(e)[:300])
        finally:
            with lock:
                inflight -= 1

    # A few workers, so that a slow RunTask delays the next tick's calls only when the server
    # cannot keep up with the rate at all: the rates then measure the server, not the loader.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    tick = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now < tick:
            time.sleep(tick - now)  # a SIGTERM sets `stop`; the sleep then ends on time
            continue
        with lock:
            busy = inflight >= workers
            if not busy:
                inflight += 1
        if busy:
            if steady_at is not None:
                missed += 1
        else:
            pool.submit(one_tick)
        tick += period
        behind = time.monotonic() - tick
        if behind > period:
            # Too slow for the rate: skip the ticks that passed rather than burst to catch up.
            skip = int(behind / period)
            if steady_at is not None:
                missed += skip
            tick += skip * period
    pool.shutdown(wait=True)
    elapsed = time.monotonic() - steady_at if steady_at is not None else 0.0
    c = Client(url)

    def rate_of(n):
        return round(n / elapsed, 2) if elapsed > 0 else 0.0

    # What the stopped churn tasks went through (ecsd runs them for real; moto marks them
    # STOPPED at once): did they run before the stop, and how long did STOPPING take.
    outcome = {}
    if stopped and kind == "ecsd":
        ts = wait_status(c, stopped, "STOPPED", 120)
        outcome["ran"] = sum(1 for t in ts if t.get("startedAt"))
        outcome["stop_codes"] = dict(collections.Counter(t.get("stopCode", "-") for t in ts))
        secs = [t["stoppedAt"] - t["stoppingAt"] for t in ts if t.get("stoppedAt") and t.get("stoppingAt")]
        outcome["stopping_to_stopped_p50_ms"] = round(pct(secs, 50) * 1000, 1) if secs else None
        outcome["stopping_to_stopped_p99_ms"] = round(pct(secs, 99) * 1000, 1) if secs else None

    def ms(xs, p):
        v = pct(xs, p)
        return None if v is None else round(v * 1000, 1)

    print(json.dumps({
        "steady_seconds": round(elapsed, 2),
        "starts": starts, "stops": len(stopped), "missed_ticks": missed,
        "starts_per_s": rate_of(starts), "stops_per_s": rate_of(len(stopped)),
        "run_p50_ms": ms(lat["RunTask"], 50), "run_p99_ms": ms(lat["RunTask"], 99),
        "run_max_ms": ms(lat["RunTask"], 100),
        "stop_p50_ms": ms(lat["StopTask"], 50), "stop_p99_ms": ms(lat["StopTask"], 99),
        "stop_max_ms": ms(lat["StopTask"], 100),
        "errors": dict(errors), "first_error": first_error, "live_at_end": len(live),
        **outcome,
    }))


def stop_all(url):
    c = Client(url)
    arns, token = [], None
    while True:
        body = {"cluster": CLUSTER, "desiredStatus": "RUNNING", "maxResults": 100}
        if token:
            body["nextToken"] = token
        r = c.call("ListTasks", body)
        arns += r.get("taskArns", [])
        token = r.get("nextToken")
        if not token:
            break
    t0 = time.monotonic()
    for arn in arns:
        c.call("StopTask", {"cluster": CLUSTER, "task": arn, "reason": "bench-api done"})
    if arns:
        wait_status(c, arns, "STOPPED", 300)
    log(f"stopped {len(arns)} tasks in {time.monotonic() - t0:.1f} s")


def main(argv):
    try:
        dispatch(argv)
    except ApiError as e:
        sys.exit(str(e))


def dispatch(argv):
    if len(argv) == 5 and argv[1] == "setup" and argv[3] in ("ecsd", "moto"):
        setup(argv[2], argv[3], int(argv[4]))
    elif len(argv) == 6 and argv[1] == "churn" and argv[3] in ("ecsd", "moto"):
        churn(argv[2], argv[3], float(argv[4]), int(argv[5]))
    elif len(argv) == 3 and argv[1] == "stop-all":
        stop_all(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)

//! ecs-init's host firewall rules as ecsd adds them when it runs as root, and the
//! introspection API seen from the host and from a task: the rules exist after start, are
//! not duplicated by a restart after SIGKILL, are gone after a clean stop, the two skip
//! variables work, other rules are never touched; a process in a task's namespace cannot
//! reach the introspection port of the host, while the host itself can (the positive control).
//!
//! Same set-up as tests/tasks_containerd.rs (root, `ECSD_TEST_CONTAINERD`, `ECSD_TEST_IMAGE`).

mod harness;
mod support;

use harness::*;

/// `iptables-save`'s (or `ip6tables-save`'s) rule lines, counters left out.
async fn save(program: &str) -> Vec<String> {
    run_cmd(program, &[]).await.lines().filter(|l| l.starts_with("-A ")).map(str::to_owned).collect()
}

fn tagged(rules: &[String], namespace: &str) -> Vec<String> {
    let tag = format!("--comment \"ecsd:{namespace}\"");
    rules.iter().filter(|r| r.contains(&tag)).cloned().collect()
}

fn route_localnet() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet").unwrap().trim().to_owned()
}

/// route_localnet is one setting of the host: the tests that set or check it take turns.
static ROUTE_LOCALNET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RULES_ON: [(&str, &str); 2] =
    [("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "false"), ("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "false")];

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn rules_exist_after_start_survive_kill_once_and_go_at_a_clean_stop() {
    let _turn = ROUTE_LOCALNET.lock().await;
    let before = save("iptables-save").await;
    let default_localnet =
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/default/route_localnet").unwrap().trim().to_owned();
    let mut e = Ecsd::start(&RULES_ON).await;
    let port = e.daemon.as_ref().unwrap().introspection_addr().unwrap().port();
    let v4 = tagged(&save("iptables-save").await, &e.namespace);
    assert_eq!(v4.len(), 2, "{v4:#?}");
    assert!(
        v4.iter().any(|r| r.starts_with("-A INPUT ! -i lo -p tcp -m tcp --dport ")
            && r.contains(&format!("--dport {port} "))),
        "{v4:#?}"
    );
    assert!(
        v4.iter().any(|r| r.starts_with(
            "-A INPUT ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT"
        )),
        "{v4:#?}"
    );
    assert_eq!(tagged(&save("ip6tables-save").await, &e.namespace).len(), 1);
    assert_eq!(route_localnet(), "1");

    // SIGKILLed twice, restarted each time: the rules are there once, for the port now bound.
    e.down().await;
    assert!(tagged(&save("iptables-save").await, &e.namespace).is_empty(), "a clean stop removes them");
    assert_eq!(route_localnet(), default_localnet, "route_localnet is restored");
    for _ in 0..2 {
        let mut spawned = e.spawn_binary();
        let rules = eventually(30, "the rules of the spawned ecsd", || async {
            let rules = tagged(&save("iptables-save").await, &e.namespace);
            (rules.len() >= 2).then_some(rules)
        })
        .await;
        assert_eq!(rules.len(), 2, "{rules:#?}");
        spawned.kill();
        assert_eq!(tagged(&save("iptables-save").await, &e.namespace).len(), 2, "SIGKILL leaves them");
    }
    // What systemd's ExecStopPost runs after that SIGKILL: the leftovers go.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecsd"))
        .args(["cleanup", "--namespace", &e.namespace])
        .envs(RULES_ON)
        .env("ECSD_ECS_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("removed the firewall rules tagged ecsd:{}\n", e.namespace)
    );
    assert!(tagged(&save("iptables-save").await, &e.namespace).is_empty());
    assert!(tagged(&save("ip6tables-save").await, &e.namespace).is_empty());
    assert_eq!(route_localnet(), default_localnet, "route_localnet is restored");
    e.up().await;
    assert_eq!(tagged(&save("iptables-save").await, &e.namespace).len(), 2);
    assert_eq!(tagged(&save("ip6tables-save").await, &e.namespace).len(), 1);
    let namespace = e.namespace.clone();
    e.finish().await;
    let after = save("iptables-save").await;
    assert!(tagged(&after, &namespace).is_empty());
    assert!(tagged(&save("ip6tables-save").await, &namespace).is_empty());
    assert_eq!(route_localnet(), default_localnet);
    // Rules ecsd did not add are all still there (the INPUT chain's, which ecsd changes).
    for rule in before.iter().filter(|r| r.starts_with("-A INPUT ")) {
        assert!(after.contains(rule), "{rule} was removed");
    }
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn the_skip_variables_leave_their_rules_out() {
    let _turn = ROUTE_LOCALNET.lock().await;
    let localnet = route_localnet();
    let mut e = Ecsd::start(&[
        ("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "true"),
        ("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "true"),
    ])
    .await;
    assert!(tagged(&save("iptables-save").await, &e.namespace).is_empty());
    assert!(tagged(&save("ip6tables-save").await, &e.namespace).is_empty());
    assert_eq!(route_localnet(), localnet, "route_localnet is left alone");
    e.down().await;
    e.env.retain(|(k, _)| k != "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER");
    e.env.push(("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER".into(), "false".into()));
    e.up().await;
    let rules = tagged(&save("iptables-save").await, &e.namespace);
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert!(rules[0].contains("-d 127.0.0.0/8"), "{rules:#?}");
    e.finish().await;
}

/// Connects from `netns` to `addr` (`host:port`) with bash's /dev/tcp; true when it connects.
async fn connects_from(netns: &str, addr: &str) -> bool {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!("exec 3<>/dev/tcp/{host}/{port}");
    in_netns(netns, &[], &["timeout", "3", "bash", "-c", &script]).await.0 == 0
}

#[tokio::test]
#[ignore = "needs root and containerd"]
async fn a_task_cannot_reach_the_hosts_introspection_port_but_the_host_can() {
    // Served on every address, so only the rule keeps tasks away from it. The localhost
    // filter (and route_localnet) is another test's.
    let env = [
        ("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER", "true"),
        ("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "false"),
        ("ECSD_INTROSPECTION_LISTEN", "0.0.0.0:0"),
    ];
    let mut e = Ecsd::start(&env).await;
    e.register_mode("sleeper", "awsvpc", vec![sh("app", "trap 'exit 0' TERM; sleep 1000 & wait").build()])
        .await;
    let t = e.run_awsvpc("sleeper", "default").await;
    let arn = arn_of(&t);
    let running = e.wait_status(&arn, "RUNNING").await;
    let runtime_id = named(&running, "app").runtime_id().unwrap().to_owned();
    let port = e.daemon.as_ref().unwrap().introspection_addr().unwrap().port();

    // The host: `curl 127.0.0.1:PORT/v1/tasks` lists the task with its runtime id.
    let body = reqwest::get(format!("http://127.0.0.1:{port}/v1/tasks")).await.unwrap().text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = v["Tasks"].as_array().unwrap().iter().find(|x| x["Arn"] == arn.as_str()).expect("listed");
    assert_eq!(listed["KnownStatus"], "RUNNING");
    assert_eq!(listed["Containers"][0]["DockerId"], runtime_id.as_str());

    let netns = e.netns_name(&arn);
    let gateway = format!("{}:{port}", e.gateway());
    assert!(!connects_from(&netns, &gateway).await, "the task reached {gateway}");
    assert!(!connects_from(&netns, &format!("127.0.0.1:{port}")).await, "127.0.0.1 in the task is its own");

    // The positive control: the same task reaches the same port once the rule is skipped.
    e.down().await;
    e.env.retain(|(k, _)| k != "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS" && k != "ECSD_INTROSPECTION_LISTEN");
    e.env.push(("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS".into(), "true".into()));
    e.env.push(("ECSD_INTROSPECTION_LISTEN".into(), format!("0.0.0.0:{port}")));
    e.up().await;
    assert!(connects_from(&netns, &gateway).await, "without the rule the task reaches {gateway}");
    e.finish().await;
}

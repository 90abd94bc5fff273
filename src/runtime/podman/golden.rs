//! Golden tests of [`to_specgen`]: specs built by the crate's spec builder from representative
//! task definitions, mapped to SpecGenerator JSON (or the refusal) and compared with
//! `testdata/<name>.json`. `UPDATE_GOLDEN=1 cargo test --lib runtime::podman::` rewrites the
//! files; review the diff before keeping it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::specgen::{RlimitPair, SpecgenInput, to_specgen};
use crate::model::shapes::TaskDefinition;
use crate::runtime::ImageConfig;
use crate::spec::{
    ContainerFiles, ContainerInput, HostLimits, Limit, NetworkMode, ResolvedDevices, RlimitKind, TaskInput,
};

const TASK_ID: &str = "0123456789abcdef0123456789abcdef";
const TASK_ARN: &str = "arn:aws:ecs:us-east-1:000000000000:task/default/0123456789abcdef0123456789abcdef";
/// Docker's default capabilities, which ecsd's containers.conf gives Podman.
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

struct Case {
    definition: TaskDefinition,
    image: ImageConfig,
    passwd: Option<&'static str>,
    init: Option<PathBuf>,
    hostname: &'static str,
    devices: ResolvedDevices,
    /// As a rootless ecsd's engine builds it (see `spec::without_cgroups`, `for_user_namespace`).
    rootless: bool,
}

fn case(definition: Value, image: Value) -> Case {
    let strings =
        |k: &str| -> Option<Vec<String>> { image.get(k).map(|v| serde_json::from_value(v.clone()).unwrap()) };
    let string = |k: &str| image.get(k).map(|v| v.as_str().unwrap().to_owned());
    Case {
        definition: serde_json::from_value(definition).expect("a task definition"),
        image: ImageConfig {
            env: strings("Env").unwrap_or_default(),
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            working_dir: string("WorkingDir"),
            user: string("User"),
            stop_signal: string("StopSignal"),
            labels: BTreeMap::new(),
        },
        passwd: None,
        init: None,
        hostname: "0123456789ab",
        devices: ResolvedDevices::new(),
        rootless: false,
    }
}

/// The spec builder's output for the first container, mapped; the refusal as `{"error": …}`.
fn specgen_json(c: &Case) -> Value {
    let containers = c.definition.container_definitions.as_deref().unwrap();
    let def = &containers[0];
    let name = def.name.clone().unwrap();
    let network_mode = NetworkMode::of(&c.definition);
    let netns = (network_mode != NetworkMode::Host).then(|| PathBuf::from("/run/netns/ecsd-0123456789ab"));
    let dir = PathBuf::from(format!("/var/lib/ecsd/tasks/{TASK_ID}/{name}"));
    let files = ContainerFiles {
        hosts: Some(dir.join("hosts")),
        resolv_conf: Some(dir.join("resolv.conf")),
        hostname: Some(dir.join("hostname")),
    };
    let cgroups_path = format!("/ecs/{TASK_ID}/{name}");
    let volumes = BTreeMap::new();
    let task = TaskInput {
        task_arn: TASK_ARN,
        task_id: TASK_ID,
        cluster: "default",
        definition: &c.definition,
        network_mode,
        netns: netns.as_deref(),
        pid_ns: None,
        ipc_ns: None,
        shm: None,
        volumes: &volumes,
        cgroups_path: &cgroups_path,
    };
    let devices = c.devices.clone();
    let container = ContainerInput {
        definition: def,
        image: &c.image,
        hostname: c.hostname,
        passwd: c.passwd,
        group: None,
        env_files: &[],
        extra_env: &[],
        files: &files,
        devices: &devices,
    };
    let host = HostLimits {
        rlimits: BTreeMap::from([
            (RlimitKind::Nofile, Limit { soft: 1024, hard: 20_000 }),
            (RlimitKind::Nproc, Limit { soft: 96_365, hard: 96_365 }),
        ]),
        capabilities: None,
        init: c.init.clone(),
    };
    let mut spec = crate::spec::build(&task, &container, &host).expect("the spec builds").spec;
    if c.rootless {
        crate::spec::without_cgroups(&mut spec);
        crate::spec::for_user_namespace(&mut spec);
    }
    let labels = crate::spec::labels(&task, &container);
    let input = SpecgenInput {
        name: "4f1c0e2a9b7d4c3e8a6f5b2d1e0c9a8b",
        image: "9d1329ed96db902e72078aa4bb32179052af0b4e10da14eb798fa1131a010e7e",
        labels: &labels,
        log_path: &dir.join("logs/container.log"),
        nproc: RlimitPair { soft: 96_365, hard: 96_365 },
        default_capabilities: &DEFAULT_CAPS,
    };
    match to_specgen(&spec, &input) {
        Ok(g) => serde_json::to_value(&g).unwrap(),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn check(name: &str, c: &Case) {
    let text = serde_json::to_string_pretty(&specgen_json(c)).unwrap() + "\n";
    let source_dir = Path::new(file!()).parent().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(source_dir).join("testdata");
    let path = dir.join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(&dir).unwrap();
        fs::write(&path, &text).unwrap();
        return;
    }
    let want = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert!(
        text == want,
        "{name}: the SpecGenerator differs from {} (run with UPDATE_GOLDEN=1 and review the diff):\n{text}",
        path.display()
    );
}

#[test]
fn minimal_busybox() {
    let c = case(
        json!({"family": "minimal", "revision": 1,
               "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 128, "essential": true}]}),
        json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}),
    );
    check("minimal_busybox", &c);
}

#[test]
fn non_root_user_drops_capabilities_from_podman_defaults() {
    let mut c = case(
        json!({"family": "web", "revision": 4, "containerDefinitions": [{
            "name": "nginx", "image": "nginx:1.27", "cpu": 256, "memory": 512,
            "command": ["nginx", "-g", "daemon off;"], "workingDirectory": "/srv/www", "user": "nginx",
            "environment": [{"name": "NGINX_PORT", "value": "8080"}],
            "linuxParameters": {"capabilities": {"drop": ["NET_RAW", "MKNOD"]}}
        }]}),
        json!({"Env": ["PATH=/usr/bin:/bin", "NGINX_PORT=80"], "Entrypoint": ["/docker-entrypoint.sh"],
               "StopSignal": "SIGQUIT"}),
    );
    c.passwd = Some("root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n");
    check("non_root_user", &c);
}

#[test]
fn non_root_user_with_an_added_capability_is_refused() {
    let c = case(
        json!({"family": "ptrace", "revision": 1, "containerDefinitions": [{
            "name": "dbg", "image": "dbg", "user": "1000:1000",
            "linuxParameters": {"capabilities": {"add": ["SYS_PTRACE"]}}
        }]}),
        json!({"Cmd": ["sleep", "1"]}),
    );
    check("non_root_added_capability", &c);
}

#[test]
fn awsvpc_init_terminal_sysctls_ulimits_readonly() {
    let mut c = case(
        json!({"family": "svc", "revision": 5, "networkMode": "awsvpc", "containerDefinitions": [{
            "name": "worker", "image": "worker", "command": ["python", "-m", "worker"],
            "interactive": true, "pseudoTerminal": true, "readonlyRootFilesystem": true,
            "dockerLabels": {"team": "payments"},
            "dockerSecurityOptions": ["no-new-privileges"],
            "systemControls": [{"namespace": "net.core.somaxconn", "value": "4096"}],
            "ulimits": [{"name": "nofile", "softLimit": 4096, "hardLimit": 8192},
                        {"name": "core", "softLimit": 0, "hardLimit": 0}],
            "linuxParameters": {"initProcessEnabled": true,
                                "capabilities": {"add": ["SYS_PTRACE"]},
                                "tmpfs": [{"containerPath": "/tmp", "size": 64}]}
        }]}),
        json!({"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "WorkingDir": "/app"}),
    );
    c.hostname = "ip-10-0-1-23.ec2.internal";
    c.init = Some(PathBuf::from("/usr/bin/catatonit"));
    check("awsvpc_init_terminal_sysctls_ulimits_readonly", &c);
}

#[test]
fn host_network_privileged() {
    let mut c = case(
        json!({"family": "node", "revision": 2, "networkMode": "host", "pidMode": "host",
               "containerDefinitions": [{"name": "agent", "image": "agent", "privileged": true,
                                         "entryPoint": ["/bin/agent"]}]}),
        json!({}),
    );
    let null = crate::spec::DeviceNode {
        path: PathBuf::from("/dev/null"),
        kind: crate::spec::DeviceKind::Char,
        major: 1,
        minor: 3,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    c.devices.insert(PathBuf::from("/dev"), vec![null]);
    check("host_network_privileged", &c);
}

#[test]
fn network_none() {
    let c = case(
        json!({"family": "batch", "revision": 2, "networkMode": "none", "ipcMode": "none",
               "containerDefinitions": [{"name": "job", "image": "job", "entryPoint": ["/bin/job", "--once"]}]}),
        json!({"Entrypoint": ["/bin/ignored"], "Cmd": ["dropped"]}),
    );
    check("network_none", &c);
}

#[test]
fn rootless_host_network_without_cgroups() {
    let mut c = case(
        json!({"family": "edge", "revision": 1, "networkMode": "host", "cpu": "256", "memory": "128",
               "containerDefinitions": [{"name": "probe", "image": "busybox", "memory": 64,
                                         "command": ["sh", "-c", "cat /proc/self/uid_map"]}]}),
        json!({"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]}),
    );
    c.rootless = true;
    check("rootless_host_network", &c);
}

//! Golden tests: representative containers, their whole spec compared with
//! `testdata/<name>.json`. `UPDATE_GOLDEN=1 cargo test --lib spec::` rewrites the files; review
//! the diff before keeping it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Capability;
use serde_json::{Map, Value, json};

use super::tests::{Fixture, TASK_ID};
use super::{ContainerFiles, DeviceKind, DeviceNode, Limit, RlimitKind};

/// Sorted object keys and capability sets, so the file does not depend on hash order.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (key, value) in entries {
                out.insert(key, canonical(value));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn sort_capabilities(spec: &mut Value) {
    if let Some(Value::Object(caps)) = spec.pointer_mut("/process/capabilities") {
        for set in caps.values_mut() {
            if let Value::Array(names) = set {
                names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
}

fn check(name: &str, fixture: &Fixture) {
    let out = match fixture.build() {
        Ok(out) => out,
        Err(e) => panic!("{name}: build failed: {e}"),
    };
    let mut value = canonical(serde_json::to_value(&out.spec).unwrap());
    sort_capabilities(&mut value);
    let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
    // file!() is relative to the package root (or absolute); join keeps an absolute one.
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
        "{name}: the spec differs from {} (run with UPDATE_GOLDEN=1 and review the diff):\n{text}",
        path.display()
    );
}

fn files(container: &str) -> ContainerFiles {
    let dir = PathBuf::from(format!("/var/lib/ecsd/tasks/{TASK_ID}/{container}"));
    ContainerFiles {
        hosts: Some(dir.join("hosts")),
        resolv_conf: Some(dir.join("resolv.conf")),
        hostname: Some(dir.join("hostname")),
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n";
const GROUP: &str = "root:x:0:root\nnginx:x:101:nginx\nwww-data:x:82:nginx\n";

#[test]
fn minimal_busybox() {
    let mut f = Fixture::new(json!({
        "family": "minimal", "revision": 1,
        "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 128, "essential": true}]
    }))
    .image(
        json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}),
    );
    f.files = files("app");
    check("minimal_busybox", &f);
}

#[test]
fn entrypoint_command_env_user() {
    let mut f = Fixture::new(json!({
        "family": "web", "revision": 4,
        "containerDefinitions": [{
            "name": "nginx", "image": "nginx:1.27", "cpu": 256, "memory": 512,
            "command": ["nginx", "-g", "daemon off;", "-c", "/etc/nginx/alt.conf"],
            "workingDirectory": "/srv/www",
            "user": "nginx",
            "environment": [
                {"name": "NGINX_PORT", "value": "8080"},
                {"name": "NGINX_ENTRYPOINT_QUIET_LOGS", "value": "1"},
                {"name": "UPSTREAM", "value": "http://api:9000/?a=1&b=2"}
            ]
        }]
    }))
    .image(json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.27.3", "NGINX_PORT=80"],
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "StopSignal": "SIGQUIT"
    }));
    f.passwd = Some(PASSWD.to_owned());
    f.group = Some(GROUP.to_owned());
    f.env_files = vec![("FROM_S3".to_owned(), "yes".to_owned())];
    f.extra_env = vec![
        (
            "ECS_CONTAINER_METADATA_URI".to_owned(),
            "http://169.254.170.2/v3/6f1f0e0a-2c7b-4f6e-9b9e-2a1f3c4d5e6f".to_owned(),
        ),
        (
            "ECS_CONTAINER_METADATA_URI_V4".to_owned(),
            "http://169.254.170.2/v4/6f1f0e0a-2c7b-4f6e-9b9e-2a1f3c4d5e6f".to_owned(),
        ),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned()),
    ];
    f.files = files("nginx");
    check("entrypoint_command_env_user", &f);
}

#[test]
fn privileged_host_network() {
    let mut f = Fixture::new(json!({
        "family": "node-exporter", "revision": 2, "networkMode": "host", "pidMode": "host", "ipcMode": "host",
        "containerDefinitions": [{"name": "agent", "image": "agent", "privileged": true,
                                  "entryPoint": ["/bin/agent"], "command": ["--collect", "all"]}]
    }));
    f.hostname = "ip-172-31-0-10".to_owned();
    // Like this kind of host, whose root lacks CAP_SYS_RESOURCE.
    let held = super::process::CAPABILITIES.iter().map(|(_, c)| *c).filter(|c| *c != Capability::SysResource);
    f.host.capabilities = Some(held.collect());
    let node = |path: &str, kind, major, minor, mode, gid| DeviceNode {
        path: PathBuf::from(path),
        kind,
        major,
        minor,
        mode,
        uid: 0,
        gid,
    };
    f.devices.insert(
        PathBuf::from("/dev"),
        vec![
            node("/dev/fuse", DeviceKind::Char, 10, 229, 0o666, 0),
            node("/dev/kmsg", DeviceKind::Char, 1, 11, 0o644, 0),
            node("/dev/net/tun", DeviceKind::Char, 10, 200, 0o666, 0),
            node("/dev/null", DeviceKind::Char, 1, 3, 0o666, 0),
            node("/dev/vda", DeviceKind::Block, 254, 0, 0o660, 6),
        ],
    );
    check("privileged_host_network", &f);
}

#[test]
fn hardened_readonly() {
    let mut f = Fixture::new(json!({
        "family": "hardened", "revision": 9,
        "containerDefinitions": [{
            "name": "api", "image": "api", "cpu": 512, "memory": 256, "memoryReservation": 128,
            "user": "1000:1000",
            "readonlyRootFilesystem": true,
            "dockerSecurityOptions": ["no-new-privileges"],
            "linuxParameters": {
                "capabilities": {"add": ["SYS_PTRACE", "NET_ADMIN"], "drop": ["NET_RAW", "MKNOD"]},
                "devices": [{"hostPath": "/dev/fuse", "permissions": ["read", "write"]}],
                "sharedMemorySize": 256,
                "tmpfs": [
                    {"containerPath": "/tmp", "size": 64, "mountOptions": ["rw", "exec", "mode=1777"]},
                    {"containerPath": "/run", "size": 8}
                ],
                "maxSwap": 512,
                "swappiness": 10
            }
        }]
    }))
    .image(json!({"Entrypoint": ["/app/api"], "WorkingDir": "/app"}));
    f.devices.insert(
        PathBuf::from("/dev/fuse"),
        vec![DeviceNode {
            path: PathBuf::from("/dev/fuse"),
            kind: DeviceKind::Char,
            major: 10,
            minor: 229,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }],
    );
    f.files = files("api");
    check("hardened_readonly", &f);
}

#[test]
fn volumes_host_task_and_volumes_from() {
    let mut f = Fixture::new(json!({
        "family": "pipeline", "revision": 12, "pidMode": "task", "ipcMode": "task",
        "volumes": [
            {"name": "shared", "host": {"sourcePath": "/srv/shared"}},
            {"name": "scratch"},
            {"name": "config", "dockerVolumeConfiguration": {"scope": "task"}}
        ],
        "containerDefinitions": [
            {"name": "app", "image": "app", "command": ["run"],
             "volumesFrom": [{"sourceContainer": "sidecar"}],
             "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/scratch"}]},
            {"name": "sidecar", "image": "sidecar",
             "volumesFrom": [{"sourceContainer": "producer", "readOnly": true}],
             "mountPoints": [{"sourceVolume": "config", "containerPath": "/etc/app", "readOnly": true}]},
            {"name": "producer", "image": "producer",
             "mountPoints": [{"sourceVolume": "shared", "containerPath": "/data"},
                             {"sourceVolume": "scratch", "containerPath": "/scratch"}]}
        ]
    }));
    let task_dir = format!("/var/lib/ecsd/tasks/{TASK_ID}");
    f.volumes = BTreeMap::from([
        ("shared".to_owned(), PathBuf::from("/srv/shared")),
        ("scratch".to_owned(), PathBuf::from(format!("{task_dir}/volumes/scratch"))),
        ("config".to_owned(), PathBuf::from(format!("{task_dir}/volumes/config"))),
    ]);
    f.pid_ns = Some(PathBuf::from("/proc/4242/ns/pid"));
    f.ipc_ns = Some(PathBuf::from("/proc/4242/ns/ipc"));
    f.shm = Some(PathBuf::from(format!("{task_dir}/shm")));
    f.image = crate::runtime::ImageConfig::default();
    f.files = files("app");
    check("volumes_host_task_and_volumes_from", &f);
}

#[test]
fn ulimits_clamped() {
    let mut f = Fixture::new(json!({
        "family": "db", "revision": 1,
        "containerDefinitions": [{
            "name": "postgres", "image": "postgres:16", "memory": 1024,
            "ulimits": [
                {"name": "nofile", "softLimit": 65536, "hardLimit": 1048576},
                {"name": "core", "softLimit": -1, "hardLimit": -1},
                {"name": "memlock", "softLimit": 67108864, "hardLimit": 67108864},
                {"name": "nproc", "softLimit": 4096, "hardLimit": 8192}
            ]
        }]
    }))
    .image(json!({"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["postgres"], "StopSignal": "SIGINT",
                  "Env": ["PGDATA=/var/lib/postgresql/data"]}));
    f.host.rlimits.insert(RlimitKind::Nproc, Limit { soft: 96_365, hard: 96_365 });
    f.files = files("postgres");
    check("ulimits_clamped", &f);
    assert_eq!(f.build().unwrap().clamped.len(), 2);
}

#[test]
fn awsvpc_init_terminal_sysctls() {
    let mut f = Fixture::new(json!({
        "family": "svc", "revision": 5, "networkMode": "awsvpc",
        "containerDefinitions": [{
            "name": "worker", "image": "worker", "command": ["python", "-m", "worker"],
            "interactive": true, "pseudoTerminal": true,
            "dockerLabels": {"team": "payments"},
            "systemControls": [
                {"namespace": "net.core.somaxconn", "value": "4096"},
                {"namespace": "net.ipv4.tcp_keepalive_time", "value": "60"},
                {"namespace": "kernel.shmmax", "value": "68719476736"}
            ],
            "linuxParameters": {"initProcessEnabled": true}
        }]
    }))
    .image(json!({"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED=1"], "WorkingDir": "/app"}));
    f.hostname = "ip-10-0-1-23.ec2.internal".to_owned();
    f.host.init = Some(PathBuf::from("/usr/libexec/ecsd/catatonit"));
    f.files = files("worker");
    check("awsvpc_init_terminal_sysctls", &f);
}

#[test]
fn network_none_ipc_none() {
    let mut f = Fixture::new(json!({
        "family": "batch", "revision": 2, "networkMode": "none", "ipcMode": "none",
        "containerDefinitions": [{"name": "job", "image": "job", "entryPoint": ["/bin/job", "--once"]}]
    }))
    .image(json!({"Entrypoint": ["/bin/ignored"], "Cmd": ["dropped"], "User": "nobody"}));
    f.passwd = Some("nobody:x:65534:65534:nobody:/:/sbin/nologin\n".to_owned());
    f.group = Some("nogroup:x:65534:\n".to_owned());
    f.files = files("job");
    check("network_none_ipc_none", &f);
}

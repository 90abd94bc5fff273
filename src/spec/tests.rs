use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Mount, Spec};
use serde_json::json;

use super::*;
use crate::model::shapes::HostEntry;

pub(super) const TASK_ID: &str = "0123456789abcdef0123456789abcdef";
pub(super) const TASK_ARN: &str =
    "arn:aws:ecs:us-east-1:000000000000:task/default/0123456789abcdef0123456789abcdef";

/// Everything `build` takes, owned, with defaults a test changes what it needs of.
pub(super) struct Fixture {
    pub definition: TaskDefinition,
    pub container: String,
    pub image: ImageConfig,
    pub network_mode: NetworkMode,
    pub netns: Option<PathBuf>,
    pub pid_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub shm: Option<PathBuf>,
    pub volumes: BTreeMap<String, PathBuf>,
    pub hostname: String,
    pub passwd: Option<String>,
    pub group: Option<String>,
    pub env_files: Vec<(String, String)>,
    pub extra_env: Vec<(String, String)>,
    pub files: ContainerFiles,
    pub devices: ResolvedDevices,
    pub host: HostLimits,
}

impl Fixture {
    /// A task of one definition (JSON as ECS describes it) building its first container.
    pub fn new(definition: serde_json::Value) -> Self {
        let definition: TaskDefinition = serde_json::from_value(definition).expect("a task definition");
        let container =
            definition.container_definitions.as_ref().expect("containers")[0].name.clone().unwrap();
        let network_mode = NetworkMode::of(&definition);
        Fixture {
            definition,
            container,
            image: ImageConfig::default(),
            network_mode,
            netns: (network_mode != NetworkMode::Host).then(|| PathBuf::from("/run/netns/ecsd-0123456789ab")),
            pid_ns: None,
            ipc_ns: None,
            shm: None,
            volumes: BTreeMap::new(),
            hostname: "0123456789ab".to_owned(),
            passwd: None,
            group: None,
            env_files: Vec::new(),
            extra_env: Vec::new(),
            files: ContainerFiles::default(),
            devices: ResolvedDevices::new(),
            host: HostLimits {
                rlimits: BTreeMap::from([
                    (RlimitKind::Nofile, Limit { soft: 1024, hard: 20_000 }),
                    (RlimitKind::Core, Limit { soft: 0, hard: u64::MAX }),
                    (RlimitKind::Memlock, Limit { soft: 8_388_608, hard: 8_388_608 }),
                    (RlimitKind::Nproc, Limit { soft: 96_365, hard: 96_365 }),
                ]),
                capabilities: None,
                init: None,
            },
        }
    }

    /// One container definition (JSON) in a bridge task.
    pub fn container(container: serde_json::Value) -> Self {
        Self::new(json!({"family": "test", "revision": 3, "containerDefinitions": [container]}))
    }

    pub fn image(mut self, image: serde_json::Value) -> Self {
        let field = |k: &str| image.get(k).cloned();
        let strings =
            |k: &str| -> Option<Vec<String>> { field(k).map(|v| serde_json::from_value(v).unwrap()) };
        let string = |k: &str| field(k).map(|v| v.as_str().unwrap().to_owned());
        self.image = ImageConfig {
            env: strings("Env").unwrap_or_default(),
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            working_dir: string("WorkingDir"),
            user: string("User"),
            stop_signal: string("StopSignal"),
            labels: BTreeMap::new(),
        };
        self
    }

    pub fn with<R>(&self, f: impl FnOnce(&TaskInput<'_>, &ContainerInput<'_>) -> R) -> R {
        let containers = self.definition.container_definitions.as_deref().unwrap_or_default();
        let definition =
            containers.iter().find(|c| c.name.as_deref() == Some(self.container.as_str())).unwrap();
        let cgroups_path = format!("/ecs/{TASK_ID}/{}", self.container);
        let task = TaskInput {
            task_arn: TASK_ARN,
            task_id: TASK_ID,
            cluster: "default",
            definition: &self.definition,
            network_mode: self.network_mode,
            netns: self.netns.as_deref(),
            pid_ns: self.pid_ns.as_deref(),
            ipc_ns: self.ipc_ns.as_deref(),
            shm: self.shm.as_deref(),
            volumes: &self.volumes,
            cgroups_path: &cgroups_path,
        };
        let container = ContainerInput {
            definition,
            image: &self.image,
            hostname: &self.hostname,
            passwd: self.passwd.as_deref(),
            group: self.group.as_deref(),
            env_files: &self.env_files,
            extra_env: &self.extra_env,
            files: &self.files,
            devices: &self.devices,
        };
        f(&task, &container)
    }

    pub fn build(&self) -> Result<BuildOutput, SpecError> {
        self.with(|task, container| build(task, container, &self.host))
    }

    pub fn spec(&self) -> Spec {
        match self.build() {
            Ok(out) => out.spec,
            Err(e) => panic!("build failed: {e}"),
        }
    }

    pub fn error(&self) -> String {
        match self.build() {
            Ok(_) => panic!("build succeeded"),
            Err(e) => e.to_string(),
        }
    }
}

/// An image with a shell, as busybox has.
fn busybox() -> serde_json::Value {
    json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]})
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

fn user(spec: &Spec) -> (u32, u32, Vec<u32>) {
    let user = spec.process().as_ref().unwrap().user();
    (user.uid(), user.gid(), user.additional_gids().clone().unwrap_or_default())
}

fn mount_at<'a>(spec: &'a Spec, destination: &str) -> Option<&'a Mount> {
    spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(destination))
}

fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    let linux = spec.linux().as_ref().unwrap();
    linux.namespaces().as_ref().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

// ---- process.args -------------------------------------------------------------------------

fn args_for(
    entry_point: Option<&[&str]>,
    command: Option<&[&str]>,
    image: serde_json::Value,
) -> Result<Vec<String>, String> {
    let mut container = json!({"name": "web", "image": "x"});
    if let Some(e) = entry_point {
        container["entryPoint"] = json!(e);
    }
    if let Some(c) = command {
        container["command"] = json!(c);
    }
    let fixture = Fixture::container(container).image(image);
    fixture.build().map(|o| args(&o.spec)).map_err(|e| e.to_string())
}

#[test]
fn args_follow_dockers_entrypoint_and_cmd_rules() {
    let image = json!({"Entrypoint": ["/init"], "Cmd": ["serve", "--port", "80"]});
    // Neither set: the image's Entrypoint and Cmd.
    assert_eq!(args_for(None, None, image.clone()).unwrap(), strings(&["/init", "serve", "--port", "80"]));
    // command only: the image's Entrypoint with the new command.
    assert_eq!(args_for(None, Some(&["run"]), image.clone()).unwrap(), strings(&["/init", "run"]));
    // entryPoint only: the image's Cmd is dropped.
    assert_eq!(args_for(Some(&["/bin/sh"]), None, image.clone()).unwrap(), strings(&["/bin/sh"]));
    // Both: entryPoint then command.
    assert_eq!(
        args_for(Some(&["/bin/sh", "-c"]), Some(&["echo hi"]), image.clone()).unwrap(),
        strings(&["/bin/sh", "-c", "echo hi"])
    );
    // An empty entryPoint clears the image's; an empty command counts as unset.
    assert_eq!(args_for(Some(&[]), None, image.clone()).unwrap(), strings(&["serve", "--port", "80"]));
    assert_eq!(args_for(None, Some(&[]), image).unwrap(), strings(&["/init", "serve", "--port", "80"]));
    // An image with only a Cmd.
    assert_eq!(args_for(None, None, busybox()).unwrap(), strings(&["sh"]));
}

#[test]
fn nothing_to_run_is_an_error_naming_the_container() {
    assert_eq!(
        args_for(None, None, json!({})).unwrap_err(),
        "container 'web': nothing to run: entryPoint and command are empty and the image has no Entrypoint or Cmd; set command in the container definition"
    );
    assert!(args_for(Some(&[]), None, json!({"Entrypoint": ["/init"]})).is_err());
}

#[test]
fn init_runs_the_command_under_the_bind_mounted_init() {
    let mut fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["sleep", "1"],
        "linuxParameters": {"initProcessEnabled": true}
    }));
    assert_eq!(
        fixture.error(),
        "container 'web': linuxParameters.initProcessEnabled needs an init binary, and none is configured on this host"
    );
    fixture.host.init = Some(PathBuf::from("/usr/libexec/ecsd/tini"));
    let out = fixture.build().unwrap();
    assert!(out.init);
    assert_eq!(args(&out.spec), strings(&["/sbin/ecsd-init", "--", "sleep", "1"]));
    let init = mount_at(&out.spec, INIT_PATH).unwrap();
    assert_eq!(init.source().as_deref(), Some(Path::new("/usr/libexec/ecsd/tini")));
    assert_eq!(init.options().clone().unwrap(), strings(&["rbind", "ro", "rprivate"]));
}

// ---- process.env --------------------------------------------------------------------------

#[test]
fn env_layers_image_files_definition_and_engine_in_first_seen_order() {
    let mut fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["true"],
        "environment": [
            {"name": "MODE", "value": "task-def"},
            {"name": "DSN", "value": "postgres://u:p@db/x?sslmode=require&a=b"},
            {"name": "EMPTY"}
        ]
    }))
    .image(json!({"Env": ["PATH=/opt/bin:/usr/bin", "MODE=image", "LANG=C.UTF-8", "NOVALUE"]}));
    fixture.env_files = vec![("LANG".into(), "en_US.UTF-8".into()), ("FROM_FILE".into(), "1".into())];
    fixture.extra_env = vec![
        ("ECS_CONTAINER_METADATA_URI_V4".into(), "http://169.254.170.2/v4/abc".into()),
        ("MODE".into(), "engine".into()),
    ];
    assert_eq!(
        env(&fixture.spec()),
        strings(&[
            "PATH=/opt/bin:/usr/bin",
            "HOSTNAME=0123456789ab",
            "MODE=engine",
            "LANG=en_US.UTF-8",
            "FROM_FILE=1",
            "DSN=postgres://u:p@db/x?sslmode=require&a=b",
            "EMPTY=",
            "ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/abc",
        ])
    );
}

#[test]
fn env_defaults_path_and_sets_term_with_a_terminal() {
    let mut fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["sh"], "pseudoTerminal": true, "hostname": "web-1"
    }));
    fixture.image = ImageConfig::default();
    assert_eq!(
        env(&fixture.spec()),
        strings(&[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=web-1",
            "TERM=xterm"
        ])
    );
}

#[test]
fn engine_region_is_added_only_when_the_container_sets_none() {
    let region =
        vec![("AWS_REGION".into(), "us-east-1".into()), ("AWS_DEFAULT_REGION".into(), "us-east-1".into())];
    let mut fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}));
    fixture.extra_env = region.clone();
    let all = env(&fixture.spec());
    assert!(all.contains(&"AWS_REGION=us-east-1".to_owned()));
    assert!(all.contains(&"AWS_DEFAULT_REGION=us-east-1".to_owned()));

    let mut fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["true"],
        "environment": [{"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"}]
    }));
    fixture.extra_env = region.clone();
    let all = env(&fixture.spec());
    assert!(all.contains(&"AWS_DEFAULT_REGION=eu-west-1".to_owned()));
    assert!(!all.iter().any(|e| e.starts_with("AWS_REGION=")));

    let mut fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}))
        .image(json!({"Env": ["AWS_REGION=ap-south-1"]}));
    fixture.extra_env = region;
    let all = env(&fixture.spec());
    assert!(all.contains(&"AWS_REGION=ap-south-1".to_owned()));
    assert!(!all.iter().any(|e| e.starts_with("AWS_DEFAULT_REGION=")));
}

#[test]
fn unnamed_environment_variable_is_an_error() {
    let fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["true"], "environment": [{"name": "A", "value": "1"}, {"value": "2"}]
    }));
    assert_eq!(fixture.error(), "container 'web': environment[1] has no name");
}

// ---- process.cwd --------------------------------------------------------------------------

#[test]
fn cwd_is_working_directory_else_the_images_else_root() {
    let cwd = |container: serde_json::Value, image: serde_json::Value| {
        let spec = Fixture::container(container).image(image).spec();
        spec.process().as_ref().unwrap().cwd().to_string_lossy().into_owned()
    };
    let c = json!({"name": "web", "image": "x", "command": ["true"]});
    assert_eq!(cwd(c.clone(), json!({})), "/");
    assert_eq!(cwd(c.clone(), json!({"WorkingDir": "/app"})), "/app");
    let mut with_dir = c;
    with_dir["workingDirectory"] = json!("/srv");
    assert_eq!(cwd(with_dir.clone(), json!({"WorkingDir": "/app"})), "/srv");

    with_dir["workingDirectory"] = json!("srv");
    assert_eq!(
        Fixture::container(with_dir).error(),
        "container 'web': workingDirectory 'srv' is not an absolute path"
    );
}

// ---- process.user -------------------------------------------------------------------------

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    # a comment\n\
    \n\
    app:x:1000:1000:App:/home/app:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:root\n\
    daemon:x:1:root,app\n\
    app:x:1000:\n\
    staff:x:50:app\n\
    video:x:44:app,daemon\n\
    nogroup:x:65534:\n";

fn resolve(spec_user: &str) -> Result<(u32, u32, Vec<u32>), String> {
    let mut fixture =
        Fixture::container(json!({"name": "web", "image": "x", "command": ["true"], "user": spec_user}));
    fixture.passwd = Some(PASSWD.to_owned());
    fixture.group = Some(GROUP.to_owned());
    fixture.build().map(|o| user(&o.spec)).map_err(|e| e.to_string())
}

#[test]
fn user_forms_resolve_like_runc() {
    // A name: its uid and gid, and the groups listing it.
    assert_eq!(resolve("app").unwrap(), (1000, 1000, vec![1000, 1, 50, 44]));
    // A uid in passwd is that user, with its groups.
    assert_eq!(resolve("1000").unwrap(), (1000, 1000, vec![1000, 1, 50, 44]));
    // A uid not in passwd gets gid 0 and no groups.
    assert_eq!(resolve("4242").unwrap(), (4242, 0, vec![0]));
    // An explicit group replaces the primary group and drops the supplementary ones.
    assert_eq!(resolve("1000:1000").unwrap(), (1000, 1000, vec![1000]));
    assert_eq!(resolve("app:staff").unwrap(), (1000, 50, vec![50]));
    assert_eq!(resolve("4242:staff").unwrap(), (4242, 50, vec![50]));
    assert_eq!(resolve("app:4343").unwrap(), (1000, 4343, vec![4343]));
    assert_eq!(resolve("nobody").unwrap(), (65534, 65534, vec![65534]));
    // No user at all is root, with root's groups.
    assert_eq!(resolve("").unwrap(), (0, 0, vec![0, 1]));
}

#[test]
fn unknown_user_or_group_is_an_error_naming_both() {
    assert_eq!(
        resolve("www-data").unwrap_err(),
        "container 'web': user 'www-data' names user 'www-data', which is not in the image's /etc/passwd; use a numeric uid or a user the image defines"
    );
    assert_eq!(
        resolve("app:wheel").unwrap_err(),
        "container 'web': user 'app:wheel' names group 'wheel', which is not in the image's /etc/group; use a numeric gid or a group the image defines"
    );
    assert_eq!(
        resolve("4294967296").unwrap_err(),
        "container 'web': user '4294967296' has uid 4294967296, outside 0 to 2147483647"
    );
    assert_eq!(
        resolve("1:2147483648").unwrap_err(),
        "container 'web': user '1:2147483648' has gid 2147483648, outside 0 to 2147483647"
    );
}

#[test]
fn image_user_applies_without_passwd_only_when_numeric() {
    let fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}))
        .image(json!({"User": "65532:65532"}));
    assert_eq!(user(&fixture.spec()), (65532, 65532, vec![65532]));
    let fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}))
        .image(json!({"User": "nonroot"}));
    assert_eq!(
        fixture.error(),
        "container 'web': the image's User 'nonroot' names user 'nonroot', which is not in the image's /etc/passwd; use a numeric uid or a user the image defines"
    );
}

// ---- stop signal --------------------------------------------------------------------------

fn signal(stop_signal: Option<&str>) -> Result<i32, String> {
    let mut fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}));
    fixture.image.stop_signal = stop_signal.map(str::to_owned);
    fixture.with(|_, container| stop_signal_of(container))
}

fn stop_signal_of(container: &ContainerInput<'_>) -> Result<i32, String> {
    stop_signal(container).map_err(|e| e.to_string())
}

#[test]
fn stop_signal_parses_like_docker() {
    assert_eq!(signal(None), Ok(15));
    assert_eq!(signal(Some("")), Ok(15));
    assert_eq!(signal(Some("SIGQUIT")), Ok(3));
    assert_eq!(signal(Some("QUIT")), Ok(3));
    assert_eq!(signal(Some("sigwinch")), Ok(28));
    assert_eq!(signal(Some("9")), Ok(9));
    assert_eq!(signal(Some("SIGRTMIN+3")), Ok(37));
    assert_eq!(signal(Some("RTMAX-1")), Ok(63));
    assert_eq!(signal(Some("SIGRTMAX")), Ok(64));
    for bad in ["SIGFOO", "0", "65", "RTMIN+16"] {
        assert_eq!(
            signal(Some(bad)),
            Err(format!(
                "container 'web': the image's StopSignal '{bad}' is not a signal; use a name such as SIGTERM or a number from 1 to 64"
            ))
        );
    }
}

#[test]
fn build_reports_the_stop_signal_and_refuses_a_bad_one() {
    let fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}))
        .image(json!({"StopSignal": "SIGINT"}));
    assert_eq!(fixture.build().unwrap().stop_signal, 2);
    let fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}))
        .image(json!({"StopSignal": "SIGNOPE"}));
    assert!(fixture.error().contains("StopSignal 'SIGNOPE' is not a signal"));
}

// ---- capabilities -------------------------------------------------------------------------

fn caps(linux_parameters: serde_json::Value) -> Result<Vec<Capability>, String> {
    let fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["true"], "linuxParameters": linux_parameters
    }));
    let spec = fixture.build().map_err(|e| e.to_string())?.spec;
    let process = spec.process().clone().unwrap();
    let c = process.capabilities().clone().unwrap();
    assert_eq!(c.bounding(), c.effective());
    assert_eq!(c.bounding(), c.permitted());
    assert_eq!(c.inheritable(), &None);
    let mut out: Vec<Capability> = c.bounding().clone().unwrap().into_iter().collect();
    out.sort_by_key(|c| c.to_string());
    Ok(out)
}

fn cap_list(names: &[Capability]) -> Vec<Capability> {
    let mut out = names.to_vec();
    out.sort_by_key(|c| c.to_string());
    out
}

#[test]
fn capabilities_tweak_dockers_defaults() {
    use Capability::*;
    let defaults = [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ];
    assert_eq!(caps(json!({})).unwrap(), cap_list(&defaults));
    let tweaked: Vec<Capability> = defaults
        .iter()
        .copied()
        .filter(|c| !matches!(c, NetRaw | Mknod))
        .chain([SysPtrace, NetAdmin])
        .collect();
    assert_eq!(
        caps(json!({"capabilities": {"add": ["SYS_PTRACE", "cap_net_admin"], "drop": ["NET_RAW", "MKNOD"]}}))
            .unwrap(),
        cap_list(&tweaked)
    );
    assert_eq!(
        caps(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}})).unwrap(),
        vec![NetBindService]
    );
    let all = caps(json!({"capabilities": {"add": ["ALL"], "drop": ["SYS_ADMIN"]}})).unwrap();
    assert_eq!(all.len(), 40);
    assert!(!all.contains(&SysAdmin));
    assert_eq!(
        caps(json!({"capabilities": {"add": ["SYS_PTRACE", "FLY"]}})).unwrap_err(),
        "container 'web': linuxParameters.capabilities.add[1] 'FLY' is not a Linux capability"
    );
}

#[test]
fn capabilities_are_limited_to_what_the_host_holds() {
    use Capability::*;
    // Like this kind of host: root without CAP_SYS_RESOURCE, and say without NET_RAW either.
    let held: Vec<Capability> = super::process::CAPABILITIES
        .iter()
        .map(|(_, c)| *c)
        .filter(|c| !matches!(c, SysResource | NetRaw))
        .collect();
    let with_host = |container: serde_json::Value| {
        let mut fixture = Fixture::container(container);
        fixture.host.capabilities = Some(held.clone());
        fixture.devices.insert(PathBuf::from("/dev"), vec![]);
        fixture
    };
    let bounding = |fixture: &Fixture| -> HashSet<Capability> {
        fixture.spec().process().clone().unwrap().capabilities().clone().unwrap().bounding().clone().unwrap()
    };
    let privileged = with_host(json!({"name": "w", "image": "x", "command": ["t"], "privileged": true}));
    assert_eq!(bounding(&privileged), held.iter().copied().collect());
    let plain = with_host(json!({"name": "w", "image": "x", "command": ["t"]}));
    assert_eq!(bounding(&plain).len(), 13);
    assert!(!bounding(&plain).contains(&NetRaw));
    let add = with_host(json!({"name": "w", "image": "x", "command": ["t"],
                               "linuxParameters": {"capabilities": {"add": ["SYS_RESOURCE"]}}}));
    assert_eq!(
        add.error(),
        "container 'w': linuxParameters.capabilities.add[0] 'SYS_RESOURCE' is not available on this host: the container runtime does not hold it"
    );
    let drop = with_host(json!({"name": "w", "image": "x", "command": ["t"],
                                "linuxParameters": {"capabilities": {"drop": ["SYS_RESOURCE", "KILL"]}}}));
    assert_eq!(bounding(&drop).len(), 12);
}

#[test]
fn privileged_gets_everything_and_no_masks() {
    let mut fixture =
        Fixture::container(json!({"name": "web", "image": "x", "command": ["true"], "privileged": true}));
    assert_eq!(
        fixture.error(),
        "container 'web': privileged needs the host's devices, which were not resolved; pass device_paths() through resolve_devices() first"
    );
    fixture.devices.insert(PathBuf::from("/dev"), vec![]);
    let spec = fixture.spec();
    let process = spec.process().clone().unwrap();
    assert_eq!(process.capabilities().clone().unwrap().bounding().clone().unwrap().len(), 41);
    let linux = spec.linux().clone().unwrap();
    assert_eq!(linux.masked_paths(), &None);
    assert_eq!(linux.readonly_paths(), &None);
    let rules = linux.resources().clone().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
    assert!(mount_at(&spec, "/sys").unwrap().options().clone().unwrap().contains(&"rw".to_owned()));
}

// ---- rlimits ------------------------------------------------------------------------------

fn rlimits(spec: &Spec) -> Vec<(String, u64, u64)> {
    let process = spec.process().clone().unwrap();
    process.rlimits().clone().unwrap().iter().map(|r| (r.typ().to_string(), r.soft(), r.hard())).collect()
}

#[test]
fn ulimits_are_clamped_to_the_hosts_hard_limits_and_reported() {
    let fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["true"],
        "ulimits": [
            {"name": "nofile", "softLimit": 65536, "hardLimit": 1048576},
            {"name": "core", "softLimit": -1, "hardLimit": -1},
            {"name": "stack", "softLimit": 8388608, "hardLimit": 8388608}
        ]
    }));
    let out = fixture.build().unwrap();
    assert_eq!(
        rlimits(&out.spec),
        vec![
            ("RLIMIT_NOFILE".to_owned(), 20_000, 20_000),
            ("RLIMIT_CORE".to_owned(), u64::MAX, u64::MAX),
            ("RLIMIT_STACK".to_owned(), 8_388_608, 8_388_608),
        ]
    );
    assert_eq!(
        out.clamped,
        vec![ClampedUlimit {
            index: 0,
            kind: RlimitKind::Nofile,
            requested: Limit { soft: 65536, hard: 1_048_576 },
            applied: Limit { soft: 20_000, hard: 20_000 },
        }]
    );
    assert_eq!(
        out.clamped[0].to_string(),
        "ulimits[0] (nofile) soft 65536 hard 1048576 lowered to soft 20000 hard 20000, the most this host allows"
    );
}

#[test]
fn nofile_defaults_to_the_daemons_own() {
    let fixture = Fixture::container(json!({"name": "web", "image": "x", "command": ["true"]}));
    assert_eq!(rlimits(&fixture.spec()), vec![("RLIMIT_NOFILE".to_owned(), 1024, 20_000)]);
    let fixture = Fixture::container(json!({
        "name": "web", "image": "x", "command": ["true"], "ulimits": [{"name": "nproc", "softLimit": 100, "hardLimit": 200}]
    }));
    assert_eq!(
        rlimits(&fixture.spec()),
        vec![("RLIMIT_NPROC".to_owned(), 100, 200), ("RLIMIT_NOFILE".to_owned(), 1024, 20_000)]
    );
}

#[test]
fn bad_ulimits_are_errors() {
    let error = |ulimits: serde_json::Value| {
        Fixture::container(json!({"name": "web", "image": "x", "command": ["true"], "ulimits": ulimits}))
            .error()
    };
    assert_eq!(
        error(json!([{"name": "files", "softLimit": 1, "hardLimit": 1}])),
        "container 'web': ulimits[0] names 'files', which is not a ulimit ECS supports"
    );
    assert_eq!(
        error(json!([{"name": "nofile", "softLimit": 10, "hardLimit": 5}])),
        "container 'web': ulimits[0] (nofile) has softLimit 10 above its hardLimit 5"
    );
    assert_eq!(
        error(json!([{"name": "nofile", "softLimit": -2, "hardLimit": 5}])),
        "container 'web': ulimits[0] (nofile) has softLimit -2; limits must be -1 (unlimited) or more"
    );
    assert_eq!(
        error(
            json!([{"name": "core", "softLimit": 0, "hardLimit": 0}, {"name": "core", "softLimit": 1, "hardLimit": 1}])
        ),
        "container 'web': ulimits[1] (core) repeats ulimits[0]; each ulimit may appear once"
    );
}

// ---- resources ----------------------------------------------------------------------------

fn resources(container: serde_json::Value) -> serde_json::Value {
    let spec = Fixture::container(container).spec();
    serde_json::to_value(spec.linux().clone().unwrap().resources().clone().unwrap()).unwrap()
}

#[test]
fn without_cgroups_leaves_no_cgroup_path_and_no_limits() {
    let mut spec =
        Fixture::container(json!({"name": "w", "image": "x", "command": ["t"], "cpu": 256, "memory": 64}))
            .spec();
    let linux = spec.linux().clone().unwrap();
    assert!(linux.cgroups_path().is_some() && linux.resources().is_some());
    without_cgroups(&mut spec);
    let linux = spec.linux().clone().unwrap();
    assert_eq!((linux.cgroups_path(), linux.resources()), (&None, &None));
    // The rest of `linux` stays: namespaces, masked paths.
    assert!(linux.namespaces().is_some() && linux.masked_paths().is_some());
}

#[test]
fn in_a_user_namespace_host_network_containers_bind_the_sys_they_have() {
    let sys = |spec: &Spec| {
        let m = mount_at(spec, "/sys").unwrap();
        (m.typ().clone().unwrap(), m.source().clone().unwrap(), m.options().clone().unwrap())
    };
    let container = json!({"name": "w", "image": "x", "command": ["t"]});
    let mut host =
        Fixture::new(json!({"family": "f", "networkMode": "host", "containerDefinitions": [container]}))
            .spec();
    for_user_namespace(&mut host);
    assert_eq!(
        sys(&host),
        ("bind".into(), PathBuf::from("/sys"), strings(&["rbind", "nosuid", "noexec", "nodev", "ro"]))
    );
    assert!(mount_at(&host, "/sys/fs/cgroup").is_none());
    // With a network namespace of its own, sysfs can be mounted: nothing changes.
    let own = Fixture::container(container.clone()).spec();
    let mut changed = own.clone();
    for_user_namespace(&mut changed);
    assert_eq!(sys(&changed).0, "sysfs");
    assert_eq!(serde_json::to_value(&changed).unwrap(), serde_json::to_value(&own).unwrap());
}

#[test]
fn cpu_shares_are_clamped_like_the_agent() {
    let shares = |cpu: i32| {
        resources(json!({"name": "w", "image": "x", "command": ["t"], "cpu": cpu}))["cpu"]["shares"].clone()
    };
    assert_eq!(shares(0), json!(2));
    assert_eq!(shares(1), json!(2));
    assert_eq!(shares(256), json!(256));
    assert_eq!(shares(300_000), json!(262_144));
}

#[test]
fn memory_limits_reservation_and_swap() {
    let memory = |container: serde_json::Value| resources(container)["memory"].clone();
    assert_eq!(memory(json!({"name": "w", "image": "x", "command": ["t"]})), json!(null));
    assert_eq!(
        memory(json!({"name": "w", "image": "x", "command": ["t"], "memory": 2})),
        json!({"limit": 4_194_304})
    );
    assert_eq!(
        memory(json!({"name": "w", "image": "x", "command": ["t"], "memory": 512, "memoryReservation": 256})),
        json!({"limit": 536_870_912, "reservation": 268_435_456})
    );
    assert_eq!(
        memory(
            json!({"name": "w", "image": "x", "command": ["t"], "memory": 512, "linuxParameters": {"maxSwap": 0}})
        ),
        json!({"limit": 536_870_912, "swap": 536_870_912, "swappiness": 60})
    );
    assert_eq!(
        memory(json!({"name": "w", "image": "x", "command": ["t"], "memory": 512,
                      "linuxParameters": {"maxSwap": 1024, "swappiness": 5}})),
        json!({"limit": 536_870_912, "swap": 1_610_612_736, "swappiness": 5})
    );
    // swappiness alone is ignored, as ECS documents.
    assert_eq!(
        memory(
            json!({"name": "w", "image": "x", "command": ["t"], "memory": 512, "linuxParameters": {"swappiness": 5}})
        ),
        json!({"limit": 536_870_912})
    );
    let error = |c| Fixture::container(c).error();
    assert_eq!(
        error(
            json!({"name": "w", "image": "x", "command": ["t"], "memoryReservation": 64, "linuxParameters": {"maxSwap": 0}})
        ),
        "container 'w': linuxParameters.maxSwap needs a hard memory limit; set memory on the container"
    );
    assert_eq!(
        error(json!({"name": "w", "image": "x", "command": ["t"], "memory": 64,
                     "linuxParameters": {"maxSwap": 0, "swappiness": 101}})),
        "container 'w': linuxParameters.swappiness is 101; it must be between 0 and 100"
    );
}

// ---- devices ------------------------------------------------------------------------------

fn fuse() -> DeviceNode {
    DeviceNode {
        path: PathBuf::from("/dev/fuse"),
        kind: DeviceKind::Char,
        major: 10,
        minor: 229,
        mode: 0o666,
        uid: 0,
        gid: 0,
    }
}

#[test]
fn devices_need_resolving_and_valid_permissions() {
    let container = |permissions: serde_json::Value| {
        json!({"name": "w", "image": "x", "command": ["t"],
               "linuxParameters": {"devices": [{"hostPath": "/dev/fuse", "containerPath": "/dev/f", "permissions": permissions}]}})
    };
    let mut fixture = Fixture::container(container(json!(["read", "mknod"])));
    assert_eq!(
        fixture.error(),
        "container 'w': linuxParameters.devices[0] (/dev/fuse) was not resolved on the host; pass device_paths() through resolve_devices() first"
    );
    fixture.devices.insert(PathBuf::from("/dev/fuse"), vec![fuse()]);
    let spec = fixture.spec();
    let linux = serde_json::to_value(spec.linux().clone().unwrap()).unwrap();
    assert_eq!(
        linux["devices"],
        json!([{"path": "/dev/f", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}])
    );
    let rules = linux["resources"]["devices"].as_array().unwrap();
    assert_eq!(
        rules.last().unwrap(),
        &json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rm"})
    );

    let mut fixture = Fixture::container(container(json!(["read", "execute"])));
    fixture.devices.insert(PathBuf::from("/dev/fuse"), vec![fuse()]);
    assert_eq!(
        fixture.error(),
        "container 'w': linuxParameters.devices[0].permissions[1] is 'execute'; use read, write or mknod"
    );
}

#[test]
fn device_paths_list_what_to_resolve() {
    let definition: ContainerDefinition = serde_json::from_value(json!({
        "name": "w", "privileged": true,
        "linuxParameters": {"devices": [{"hostPath": "/dev/fuse"}, {"hostPath": "/dev/net/tun"}]}
    }))
    .unwrap();
    assert_eq!(
        device_paths(&definition),
        vec![PathBuf::from("/dev"), PathBuf::from("/dev/fuse"), PathBuf::from("/dev/net/tun")]
    );
}

#[test]
fn resolve_devices_reads_nodes_and_directories() {
    let resolved = resolve_devices(&[PathBuf::from("/dev/null")]).unwrap();
    assert_eq!(
        resolved[Path::new("/dev/null")],
        vec![DeviceNode {
            path: PathBuf::from("/dev/null"),
            kind: DeviceKind::Char,
            major: 1,
            minor: 3,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }]
    );
    let dir = std::env::temp_dir();
    let error = resolve_devices(&[PathBuf::from("/etc/hostname")]).unwrap_err();
    assert_eq!(error.to_string(), "/etc/hostname is neither a device node nor a directory");
    let missing = dir.join("ecsd-spec-no-such-device");
    let error = resolve_devices(std::slice::from_ref(&missing)).unwrap_err();
    assert_eq!(error.to_string(), format!("cannot read device {}", missing.display()));
    let all = resolve_devices(&[PathBuf::from("/dev")]).unwrap();
    let nodes = &all[Path::new("/dev")];
    assert!(nodes.iter().any(|n| n.path == Path::new("/dev/null")));
    assert!(!nodes.iter().any(|n| n.path.starts_with("/dev/pts") || n.path == Path::new("/dev/console")));
}

#[test]
fn host_limits_read_the_daemons_rlimits() {
    let host = host_limits();
    assert_eq!(host.rlimits.len(), RlimitKind::ALL.len());
    let nofile = host.rlimits[&RlimitKind::Nofile];
    assert!(nofile.soft <= nofile.hard);
    assert!(host.capabilities.is_some_and(|c| !c.is_empty() && c.len() <= 41));
    assert_eq!(host.init, None);
}

// ---- namespaces and sysctls ---------------------------------------------------------------

#[test]
fn namespaces_follow_the_network_pid_and_ipc_modes() {
    use LinuxNamespaceType::*;
    let netns = Some(PathBuf::from("/run/netns/ecsd-0123456789ab"));
    let fixture = Fixture::container(json!({"name": "w", "image": "x", "command": ["t"]}));
    let spec = fixture.spec();
    assert_eq!(
        namespaces(&spec),
        vec![(Mount, None), (Network, netns.clone()), (Uts, None), (Pid, None), (Ipc, None)]
    );
    assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));

    let mut fixture = Fixture::new(json!({
        "family": "t", "networkMode": "host", "pidMode": "host", "ipcMode": "host",
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"]}]
    }));
    fixture.hostname = "buildhost".to_owned();
    let spec = fixture.spec();
    assert_eq!(namespaces(&spec), vec![(Mount, None)]);
    assert_eq!(spec.hostname(), &None);
    assert!(env(&spec).contains(&"HOSTNAME=buildhost".to_owned()));
    assert_eq!(mount_at(&spec, "/dev/shm").unwrap().source().as_deref(), Some(Path::new("/dev/shm")));

    // A hostname in host mode gets a UTS namespace of its own, as with Docker.
    let fixture = Fixture::new(json!({
        "family": "t", "networkMode": "host",
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"], "hostname": "box"}]
    }));
    let spec = fixture.spec();
    assert_eq!(namespaces(&spec), vec![(Mount, None), (Uts, None), (Pid, None), (Ipc, None)]);
    assert_eq!(spec.hostname().as_deref(), Some("box"));

    let mut fixture = Fixture::new(json!({
        "family": "t", "networkMode": "awsvpc", "pidMode": "task", "ipcMode": "task",
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"]}]
    }));
    assert_eq!(
        fixture.error(),
        "container 'w': the task's pidMode 'task' needs the task's PID namespace, which the engine did not provide"
    );
    fixture.pid_ns = Some(PathBuf::from("/proc/42/ns/pid"));
    fixture.ipc_ns = Some(PathBuf::from("/proc/42/ns/ipc"));
    fixture.shm = Some(PathBuf::from("/var/lib/ecsd/tasks/t/shm"));
    let spec = fixture.spec();
    assert_eq!(
        namespaces(&spec),
        vec![
            (Mount, None),
            (Network, netns),
            (Uts, None),
            (Pid, Some(PathBuf::from("/proc/42/ns/pid"))),
            (Ipc, Some(PathBuf::from("/proc/42/ns/ipc"))),
        ]
    );
    let shm = mount_at(&spec, "/dev/shm").unwrap();
    assert_eq!(shm.source().as_deref(), Some(Path::new("/var/lib/ecsd/tasks/t/shm")));

    // disableNetworking: a new, empty network namespace.
    let fixture =
        Fixture::container(json!({"name": "w", "image": "x", "command": ["t"], "disableNetworking": true}));
    assert_eq!(namespaces(&fixture.spec())[1], (Network, None));
}

fn sysctl_error(mode: &str, ipc: Option<&str>, namespace: &str) -> String {
    let mut definition = json!({
        "family": "t", "networkMode": mode,
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"],
                                  "systemControls": [{"namespace": namespace, "value": "1"}]}]
    });
    if let Some(ipc) = ipc {
        definition["ipcMode"] = json!(ipc);
    }
    Fixture::new(definition).error()
}

#[test]
fn sysctls_must_be_namespaced_and_not_the_hosts() {
    let fixture = Fixture::container(json!({
        "name": "w", "image": "x", "command": ["t"],
        "systemControls": [{"namespace": "net.core.somaxconn", "value": "1024"}, {"namespace": "kernel.shmmax", "value": "68719476736"}]
    }));
    let linux = serde_json::to_value(fixture.spec().linux().clone().unwrap()).unwrap();
    assert_eq!(linux["sysctl"], json!({"net.core.somaxconn": "1024", "kernel.shmmax": "68719476736"}));

    assert_eq!(
        sysctl_error("host", None, "net.ipv4.ip_forward"),
        "container 'w': systemControls[0] (net.ipv4.ip_forward) cannot be set in host network mode: net.* parameters would change the host's own network stack"
    );
    assert_eq!(
        sysctl_error("bridge", Some("host"), "fs.mqueue.msg_max"),
        "container 'w': systemControls[0] (fs.mqueue.msg_max) cannot be set with ipcMode 'host': it would change the host's IPC limits"
    );
    assert_eq!(
        sysctl_error("awsvpc", None, "vm.swappiness"),
        "container 'w': systemControls[0] (vm.swappiness) is not namespaced, so a container cannot set it; use net.*, fs.mqueue.*, kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni or kernel.shm_rmid_forced"
    );
}

// ---- mounts -------------------------------------------------------------------------------

fn volumes_task() -> Fixture {
    let mut fixture = Fixture::new(json!({
        "family": "vols",
        "volumes": [{"name": "data", "host": {"sourcePath": "/srv/data"}}, {"name": "cache"}],
        "containerDefinitions": [
            {"name": "app", "image": "x", "command": ["t"], "volumesFrom": [{"sourceContainer": "reader"}],
             "mountPoints": [{"sourceVolume": "cache", "containerPath": "/cache"}]},
            {"name": "reader", "image": "x", "volumesFrom": [{"sourceContainer": "writer", "readOnly": true}]},
            {"name": "writer", "image": "x",
             "mountPoints": [{"sourceVolume": "data", "containerPath": "/data"},
                             {"sourceVolume": "cache", "containerPath": "/cache/", "readOnly": true}]}
        ]
    }));
    fixture.volumes = BTreeMap::from([
        ("data".to_owned(), PathBuf::from("/srv/data")),
        ("cache".to_owned(), PathBuf::from("/var/lib/ecsd/tasks/t/volumes/cache")),
    ]);
    fixture
}

#[test]
fn volumes_from_inherits_recursively_with_read_only_override() {
    let spec = volumes_task().spec();
    let data = mount_at(&spec, "/data").unwrap();
    assert_eq!(data.source().as_deref(), Some(Path::new("/srv/data")));
    assert_eq!(data.options().clone().unwrap(), strings(&["rbind", "ro", "rprivate"]));
    // The container's own mount point wins over the inherited one.
    let cache = mount_at(&spec, "/cache").unwrap();
    assert_eq!(cache.options().clone().unwrap(), strings(&["rbind", "rprivate"]));
}

#[test]
fn volume_errors_name_the_field() {
    let mut fixture = volumes_task();
    fixture.volumes.remove("data");
    assert_eq!(
        fixture.error(),
        "container 'writer': mountPoints[0] names volume 'data', which is not a volume of this task"
    );

    let mut fixture = volumes_task();
    fixture.definition.container_definitions.as_mut().unwrap()[2].volumes_from =
        Some(vec![serde_json::from_value(json!({"sourceContainer": "app"})).unwrap()]);
    assert_eq!(
        fixture.error(),
        "container 'writer': volumesFrom[0] leads back to a container on the way: app → reader → writer → app"
    );

    let mut fixture = volumes_task();
    fixture.definition.container_definitions.as_mut().unwrap()[0].volumes_from =
        Some(vec![serde_json::from_value(json!({"sourceContainer": "ghost"})).unwrap()]);
    assert_eq!(
        fixture.error(),
        "container 'app': volumesFrom[0] names container 'ghost', which is not in the task definition"
    );

    let fixture = Fixture::new(json!({
        "family": "t", "volumes": [{"name": "v"}],
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"],
            "mountPoints": [{"sourceVolume": "v", "containerPath": "/tmp"}],
            "linuxParameters": {"tmpfs": [{"containerPath": "/tmp/", "size": 64}]}}]
    }));
    let mut fixture = fixture;
    fixture.volumes.insert("v".to_owned(), PathBuf::from("/vols/v"));
    assert_eq!(fixture.error(), "container 'w': mountPoints[0] and linuxParameters.tmpfs[0] both mount /tmp");

    let mut fixture = Fixture::new(json!({
        "family": "t", "volumes": [{"name": "v"}],
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"],
            "mountPoints": [{"sourceVolume": "v", "containerPath": "data"}]}]
    }));
    fixture.volumes.insert("v".to_owned(), PathBuf::from("/vols/v"));
    assert_eq!(fixture.error(), "container 'w': mountPoints[0].containerPath 'data' is not an absolute path");
}

#[test]
fn own_mounts_replace_defaults_and_network_files() {
    let mut fixture = Fixture::new(json!({
        "family": "t", "volumes": [{"name": "etc"}],
        "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"],
            "mountPoints": [{"sourceVolume": "etc", "containerPath": "/etc/hosts"}],
            "linuxParameters": {"tmpfs": [{"containerPath": "/dev/shm", "size": 16, "mountOptions": ["exec", "mode=1777"]}]}}]
    }));
    fixture.volumes.insert("etc".to_owned(), PathBuf::from("/vols/etc/hosts"));
    fixture.files = ContainerFiles {
        hosts: Some(PathBuf::from("/run/ecsd/hosts")),
        resolv_conf: Some(PathBuf::from("/run/ecsd/resolv.conf")),
        hostname: None,
    };
    let spec = fixture.spec();
    let at =
        |d: &str| spec.mounts().as_ref().unwrap().iter().filter(|m| m.destination() == Path::new(d)).count();
    assert_eq!(at("/etc/hosts"), 1);
    assert_eq!(
        mount_at(&spec, "/etc/hosts").unwrap().source().as_deref(),
        Some(Path::new("/vols/etc/hosts"))
    );
    assert_eq!(at("/dev/shm"), 1);
    assert_eq!(
        mount_at(&spec, "/dev/shm").unwrap().options().clone().unwrap(),
        strings(&["nosuid", "nodev", "exec", "mode=1777", "size=16m"])
    );
    assert_eq!(at("/etc/hostname"), 0);
    assert_eq!(at("/etc/resolv.conf"), 1);
}

#[test]
fn shm_size_and_ipc_none() {
    let fixture = Fixture::container(json!({
        "name": "w", "image": "x", "command": ["t"], "linuxParameters": {"sharedMemorySize": 256}
    }));
    assert_eq!(
        mount_at(&fixture.spec(), "/dev/shm").unwrap().options().clone().unwrap(),
        strings(&["nosuid", "noexec", "nodev", "mode=1777", "size=268435456"])
    );
    let fixture = Fixture::new(json!({
        "family": "t", "ipcMode": "none", "containerDefinitions": [{"name": "w", "image": "x", "command": ["t"]}]
    }));
    assert!(mount_at(&fixture.spec(), "/dev/shm").is_none());
}

#[test]
fn security_options() {
    let spec = |options: serde_json::Value| {
        Fixture::container(
            json!({"name": "w", "image": "x", "command": ["t"], "dockerSecurityOptions": options}),
        )
        .build()
        .map(|o| o.spec.process().clone().unwrap())
        .map_err(|e| e.to_string())
    };
    assert_eq!(spec(json!([])).unwrap().no_new_privileges(), None);
    assert_eq!(spec(json!(["no-new-privileges"])).unwrap().no_new_privileges(), Some(true));
    assert_eq!(spec(json!(["no-new-privileges:true"])).unwrap().no_new_privileges(), Some(true));
    assert_eq!(spec(json!(["apparmor:unconfined"])).unwrap().apparmor_profile(), &None);
    assert_eq!(
        spec(json!(["apparmor:ecs-default"])).unwrap().apparmor_profile().as_deref(),
        Some("ecs-default")
    );
    assert_eq!(
        spec(json!(["no-new-privileges", "label:type:svirt_t"])).unwrap_err(),
        "container 'w': dockerSecurityOptions[1] 'label:type:svirt_t' is not supported; use no-new-privileges or apparmor:<profile>"
    );
}

#[test]
fn interactive_is_an_annotation_and_pseudo_terminal_the_terminal() {
    let spec = Fixture::container(json!({
        "name": "w", "image": "x", "command": ["sh"], "interactive": true, "pseudoTerminal": true
    }))
    .spec();
    assert_eq!(spec.annotations().clone().unwrap()[ANNOTATION_INTERACTIVE], "true");
    assert_eq!(spec.process().clone().unwrap().terminal(), Some(true));
    let spec = Fixture::container(json!({"name": "w", "image": "x", "command": ["sh"]})).spec();
    assert_eq!(spec.annotations(), &None);
    assert_eq!(spec.process().clone().unwrap().terminal(), Some(false));
}

// ---- labels -------------------------------------------------------------------------------

#[test]
fn labels_add_ecs_keys_that_docker_labels_cannot_override() {
    let fixture = Fixture::new(json!({
        "family": "web", "revision": 7,
        "containerDefinitions": [{"name": "api", "image": "x", "dockerLabels": {
            "team": "payments", "com.amazonaws.ecs.cluster": "spoofed", "com.amazonaws.ecs.task-arn": "spoofed"
        }}]
    }));
    let labels = fixture.with(labels);
    assert_eq!(
        labels,
        BTreeMap::from([
            ("com.amazonaws.ecs.cluster".to_owned(), "default".to_owned()),
            ("com.amazonaws.ecs.container-name".to_owned(), "api".to_owned()),
            ("com.amazonaws.ecs.task-arn".to_owned(), TASK_ARN.to_owned()),
            ("com.amazonaws.ecs.task-definition-family".to_owned(), "web".to_owned()),
            ("com.amazonaws.ecs.task-definition-version".to_owned(), "7".to_owned()),
            ("ecsd.task-id".to_owned(), TASK_ID.to_owned()),
            ("team".to_owned(), "payments".to_owned()),
        ])
    );
}

// ---- hosts and resolv.conf ----------------------------------------------------------------

#[test]
fn hosts_file_has_dockers_defaults_extra_hosts_and_own_addresses() {
    let extra: Vec<HostEntry> = serde_json::from_value(json!([
        {"hostname": "db.internal", "ipAddress": "10.0.0.5"},
        {"hostname": "incomplete"}
    ]))
    .unwrap();
    let addresses: Vec<IpAddr> = vec!["10.0.1.23".parse().unwrap(), "fd00::17".parse().unwrap()];
    assert_eq!(
        hosts_file("ip-10-0-1-23.ec2.internal", &addresses, &extra),
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n\
         10.0.0.5\tdb.internal\n\
         10.0.1.23\tip-10-0-1-23.ec2.internal\n\
         fd00::17\tip-10-0-1-23.ec2.internal\n"
    );
}

const HOST_RESOLV: &str = "# Generated by NetworkManager\n\
    search corp.example.com example.com\n\
    nameserver 127.0.0.53\n\
    nameserver 10.0.0.2 # the VPC resolver\n\
    nameserver ::1\n\
    options edns0 trust-ad\n\
    options timeout:2\n";

#[test]
fn resolv_conf_filters_loopback_and_applies_overrides() {
    let s = |v: &[&str]| strings(v);
    assert_eq!(
        resolv_conf(HOST_RESOLV, NetworkMode::Awsvpc, &[], &[]),
        "search corp.example.com example.com\nnameserver 10.0.0.2\noptions edns0 trust-ad timeout:2\n"
    );
    assert_eq!(
        resolv_conf(HOST_RESOLV, NetworkMode::Bridge, &s(&["1.1.1.1", "9.9.9.9"]), &s(&["svc.local"])),
        "search svc.local\nnameserver 1.1.1.1\nnameserver 9.9.9.9\noptions edns0 trust-ad timeout:2\n"
    );
    assert_eq!(
        resolv_conf("nameserver 127.0.0.53\n", NetworkMode::Bridge, &[], &[]),
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    );
    assert_eq!(
        resolv_conf("nameserver 127.0.0.53\nsearch a\n", NetworkMode::None, &[], &s(&["."])),
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    );
    // Host networking keeps the host's file, loopback resolvers included.
    assert_eq!(resolv_conf(HOST_RESOLV, NetworkMode::Host, &[], &[]), HOST_RESOLV);
    assert_eq!(
        resolv_conf(HOST_RESOLV, NetworkMode::Host, &[], &s(&["svc.local"])),
        "search svc.local\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\noptions edns0 trust-ad timeout:2\n"
    );
}

#[test]
fn network_mode_of_a_task_definition() {
    let of = |mode: Option<&str>| {
        let definition =
            TaskDefinition { network_mode: mode.map(str::to_owned), ..TaskDefinition::default() };
        NetworkMode::of(&definition)
    };
    assert_eq!(of(None), NetworkMode::Bridge);
    assert_eq!(of(Some("awsvpc")), NetworkMode::Awsvpc);
    assert_eq!(of(Some("host")), NetworkMode::Host);
    assert_eq!(of(Some("none")), NetworkMode::None);
}

//! Container resource use in Docker's `StatsJSON` shape, as the metadata endpoint's `/stats`
//! serves it: read on demand from the container's cgroup (`/ecs/<task id>/<runtime id>`, v1
//! controllers or the v2 unified tree), `/proc/stat` for the host's CPU time, and
//! `/proc/net/dev` read inside the task's network namespace. `precpu_stats` and
//! `network_rate_stats` come from the previous sample of the same container, which
//! [`StatsSampler`] keeps.
//!
//! Every root is a parameter so tests read fake files. This module only reads.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use super::metadata::{Version, docker_name, go_float, go_time};
use crate::model::network::NetworkMode;
use crate::model::task::{ContainerRecord, TaskRecord};

/// `USER_HZ`: `cpuacct.stat` and `/proc/stat` count in 1/100 s on Linux.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;
/// Go's zero `time.Time`, which Docker shows as `preread` of a first sample.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

/// Each list is `null` when the cgroup does not account it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioStats {
    pub io_service_bytes_recursive: Option<Vec<BlkioEntry>>,
    pub io_serviced_recursive: Option<Vec<BlkioEntry>>,
    pub io_queue_recursive: Option<Vec<BlkioEntry>>,
    pub io_service_time_recursive: Option<Vec<BlkioEntry>>,
    pub io_wait_time_recursive: Option<Vec<BlkioEntry>>,
    pub io_merged_recursive: Option<Vec<BlkioEntry>>,
    pub io_time_recursive: Option<Vec<BlkioEntry>>,
    pub sectors_recursive: Option<Vec<BlkioEntry>>,
}

/// Windows-only in Docker; always `{}` here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StorageStats {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuUsage {
    pub total_usage: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_usage: Vec<u64>,
    pub usage_in_kernelmode: u64,
    pub usage_in_usermode: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ThrottlingData {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    pub cpu_usage: CpuUsage,
    #[serde(skip_serializing_if = "is_zero")]
    pub system_cpu_usage: u64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub online_cpus: u32,
    pub throttling_data: ThrottlingData,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max_usage: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub failcnt: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// v4's `network_rate_stats`, over the interval since the previous sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NetworkRate {
    #[serde(serialize_with = "go_float")]
    pub rx_bytes_per_sec: f64,
    #[serde(serialize_with = "go_float")]
    pub tx_bytes_per_sec: f64,
}

/// One container's stats: Docker's `StatsJSON`, plus `network_rate_stats` in v4.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerStats {
    pub read: String,
    pub preread: String,
    pub pids_stats: PidsStats,
    pub blkio_stats: BlkioStats,
    pub num_procs: u32,
    pub storage_stats: StorageStats,
    pub cpu_stats: CpuStats,
    pub precpu_stats: CpuStats,
    pub memory_stats: MemoryStats,
    pub name: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<BTreeMap<String, NetworkStats>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_rate_stats: Option<NetworkRate>,
}

/// Interfaces of one namespace, by name.
pub type Interfaces = BTreeMap<String, NetworkStats>;

/// Reads `/proc/net/dev` of the network namespace at a path.
pub type NetDevReader = fn(&Path) -> io::Result<String>;

/// What a container's previous sample leaves for the next one.
#[derive(Debug, Clone)]
struct Previous {
    read: SystemTime,
    cpu: CpuStats,
    /// Received and sent bytes over all interfaces.
    net: Option<(u64, u64)>,
}

/// Samples containers' stats and remembers each one's last sample. One per task listener, so
/// its memory is bounded by the task's containers.
pub struct StatsSampler {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    net_dev: NetDevReader,
    previous: Mutex<HashMap<String, Previous>>,
}

impl std::fmt::Debug for StatsSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsSampler")
            .field("cgroup_root", &self.cgroup_root)
            .field("proc_root", &self.proc_root)
            .finish_non_exhaustive()
    }
}

impl StatsSampler {
    /// `cgroup_root` is where cgroups are mounted (`/sys/fs/cgroup`), `proc_root` is `/proc`.
    pub fn new(cgroup_root: &Path, proc_root: &Path) -> StatsSampler {
        StatsSampler {
            cgroup_root: cgroup_root.to_owned(),
            proc_root: proc_root.to_owned(),
            net_dev: read_net_dev_in_netns,
            previous: Mutex::new(HashMap::new()),
        }
    }

    /// Reads interface counters with `reader` instead of entering namespaces (tests).
    pub fn with_net_dev_reader(mut self, reader: NetDevReader) -> StatsSampler {
        self.net_dev = reader;
        self
    }

    /// One container's stats; `None` when it has no cgroup (not running).
    pub fn container(&self, task: &TaskRecord, c: &ContainerRecord, version: Version) -> Option<DockerStats> {
        let networks = netns_of(task, c).and_then(|ns| self.interfaces(Path::new(ns)));
        self.sample(task, c, networks, version)
    }

    /// Every container's stats by runtime id; `None` for those without a cgroup. Each
    /// namespace's counters are read once.
    pub fn task(&self, task: &TaskRecord, version: Version) -> BTreeMap<String, Option<DockerStats>> {
        let mut namespaces: HashMap<&str, Option<Interfaces>> = HashMap::new();
        let mut out = BTreeMap::new();
        for c in &task.containers {
            let networks = netns_of(task, c).and_then(|ns| {
                namespaces.entry(ns).or_insert_with(|| self.interfaces(Path::new(ns))).clone()
            });
            out.insert(c.runtime_id.clone(), self.sample(task, c, networks, version));
        }
        out
    }

    /// Forgets containers that are no longer in `task` (after a restart of the listener's
    /// task, nothing else grows the cache).
    pub fn retain(&self, task: &TaskRecord) {
        let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        previous.retain(|id, _| task.containers.iter().any(|c| &c.runtime_id == id));
    }

    fn interfaces(&self, netns: &Path) -> Option<Interfaces> {
        let text = (self.net_dev)(netns).ok()?;
        let interfaces = parse_net_dev(&text);
        (!interfaces.is_empty()).then_some(interfaces)
    }

    fn sample(
        &self,
        task: &TaskRecord,
        c: &ContainerRecord,
        networks: Option<Interfaces>,
        version: Version,
    ) -> Option<DockerStats> {
        let counters = Cgroup::locate(&self.cgroup_root, &task.id, &c.runtime_id)?.read(&self.proc_root);
        let read = SystemTime::now();
        let (system_cpu_usage, online_cpus) = host_cpu(&self.proc_root);
        let cpu_stats = CpuStats { system_cpu_usage, online_cpus, ..counters.cpu };
        let net = networks.as_ref().map(|n| {
            n.values().fold((0u64, 0u64), |(rx, tx), s| {
                (rx.saturating_add(s.rx_bytes), tx.saturating_add(s.tx_bytes))
            })
        });
        let prev = {
            let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
            previous.insert(c.runtime_id.clone(), Previous { read, cpu: cpu_stats.clone(), net })
        };
        let network_rate_stats = match (version, &prev, net) {
            (Version::V4, Some(Previous { read: then, net: Some((rx0, tx0)), .. }), Some((rx, tx))) => {
                let secs = read.duration_since(*then).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                (secs > 0.0).then(|| NetworkRate {
                    rx_bytes_per_sec: rx.saturating_sub(*rx0) as f64 / secs,
                    tx_bytes_per_sec: tx.saturating_sub(*tx0) as f64 / secs,
                })
            }
            _ => None,
        };
        Some(DockerStats {
            read: go_time(read),
            preread: prev.as_ref().map_or_else(|| GO_ZERO_TIME.to_owned(), |p| go_time(p.read)),
            pids_stats: counters.pids,
            blkio_stats: counters.blkio,
            num_procs: 0,
            storage_stats: StorageStats {},
            cpu_stats,
            precpu_stats: prev.map(|p| p.cpu).unwrap_or_default(),
            memory_stats: counters.memory,
            name: format!("/{}", docker_name(task, c)),
            id: c.runtime_id.clone(),
            networks,
            network_rate_stats,
        })
    }
}

/// The namespace whose interfaces a container's stats show: the task's in awsvpc, the
/// container's own in bridge mode; none in host mode (as Docker) or none mode (loopback only).
fn netns_of<'a>(task: &'a TaskRecord, c: &'a ContainerRecord) -> Option<&'a str> {
    match task.network_mode() {
        NetworkMode::Awsvpc => task.netns.as_deref(),
        NetworkMode::Bridge => c.netns.as_deref().or(task.netns.as_deref()),
        NetworkMode::Host | NetworkMode::None => None,
    }
}

/// Where a container's cgroup is.
#[derive(Debug)]
enum Cgroup {
    /// v1: the container's path below each controller's mount.
    V1 {
        root: PathBuf,
        rel: PathBuf,
    },
    V2 {
        dir: PathBuf,
    },
}

/// What the cgroup accounts.
#[derive(Debug, Default)]
struct Counters {
    cpu: CpuStats,
    memory: MemoryStats,
    pids: PidsStats,
    blkio: BlkioStats,
}

impl Cgroup {
    fn locate(root: &Path, task_id: &str, runtime_id: &str) -> Option<Cgroup> {
        let rel = Path::new("ecs").join(task_id).join(runtime_id);
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(rel);
            return dir.is_dir().then_some(Cgroup::V2 { dir });
        }
        let exists = ["memory", "cpuacct", "cpu"].iter().any(|c| root.join(c).join(&rel).is_dir());
        exists.then(|| Cgroup::V1 { root: root.to_owned(), rel })
    }

    fn read(&self, proc_root: &Path) -> Counters {
        let host_memory = host_memory(proc_root);
        match self {
            Cgroup::V1 { root, rel } => {
                let dir = |controller: &str| root.join(controller).join(rel);
                v1_counters(
                    &dir("cpuacct"),
                    &dir("cpu"),
                    &dir("memory"),
                    &dir("pids"),
                    &dir("blkio"),
                    host_memory,
                )
            }
            Cgroup::V2 { dir } => v2_counters(dir, host_memory),
        }
    }
}

fn v1_counters(
    acct: &Path,
    cpu: &Path,
    memory: &Path,
    pids: &Path,
    blkio: &Path,
    host_memory: u64,
) -> Counters {
    let acct_stat = read_kv(&acct.join("cpuacct.stat"));
    let throttling = read_kv(&cpu.join("cpu.stat"));
    let percpu = fs::read_to_string(acct.join("cpuacct.usage_percpu"))
        .map(|s| s.split_whitespace().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    Counters {
        cpu: CpuStats {
            cpu_usage: CpuUsage {
                total_usage: read_u64(&acct.join("cpuacct.usage")).unwrap_or(0),
                percpu_usage: percpu,
                usage_in_kernelmode: get(&acct_stat, "system").saturating_mul(NS_PER_TICK),
                usage_in_usermode: get(&acct_stat, "user").saturating_mul(NS_PER_TICK),
            },
            throttling_data: ThrottlingData {
                periods: get(&throttling, "nr_periods"),
                throttled_periods: get(&throttling, "nr_throttled"),
                throttled_time: get(&throttling, "throttled_time"),
            },
            ..CpuStats::default()
        },
        memory: MemoryStats {
            usage: read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(0),
            max_usage: read_u64(&memory.join("memory.max_usage_in_bytes")).unwrap_or(0),
            stats: read_kv(&memory.join("memory.stat")),
            failcnt: read_u64(&memory.join("memory.failcnt")).unwrap_or(0),
            limit: clamp_limit(read_u64(&memory.join("memory.limit_in_bytes")), host_memory),
        },
        pids: pids_stats(pids),
        blkio: if blkio.is_dir() { v1_blkio(blkio) } else { BlkioStats::default() },
    }
}

/// As containerd's cgroup v1 reader: the CFQ files when the kernel has them, else the
/// throttling ones (which count bytes and operations only).
fn v1_blkio(dir: &Path) -> BlkioStats {
    let list = |name: &str| Some(read_blkio(&dir.join(format!("blkio.{name}"))));
    if dir.join("blkio.io_serviced_recursive").exists() {
        return BlkioStats {
            io_service_bytes_recursive: list("io_service_bytes_recursive"),
            io_serviced_recursive: list("io_serviced_recursive"),
            io_queue_recursive: list("io_queued_recursive"),
            io_service_time_recursive: list("io_service_time_recursive"),
            io_wait_time_recursive: list("io_wait_time_recursive"),
            io_merged_recursive: list("io_merged_recursive"),
            io_time_recursive: list("time_recursive"),
            sectors_recursive: list("sectors_recursive"),
        };
    }
    let empty = || Some(vec![]);
    BlkioStats {
        io_service_bytes_recursive: list("throttle.io_service_bytes"),
        io_serviced_recursive: list("throttle.io_serviced"),
        io_queue_recursive: empty(),
        io_service_time_recursive: empty(),
        io_wait_time_recursive: empty(),
        io_merged_recursive: empty(),
        io_time_recursive: empty(),
        sectors_recursive: empty(),
    }
}

/// `8:0 Read 4096` lines (or `8:0 4096` for time and sectors); the device-less `Total` line
/// is skipped.
fn read_blkio(path: &Path) -> Vec<BlkioEntry> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (major, minor) = fields.first()?.split_once(':')?;
            let (op, value) = match fields.as_slice() {
                [_, op, value] => (*op, *value),
                [_, value] => ("", *value),
                _ => return None,
            };
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: op.to_owned(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

fn v2_counters(dir: &Path, host_memory: u64) -> Counters {
    let cpu = read_kv(&dir.join("cpu.stat"));
    let usec = |key: &str| get(&cpu, key).saturating_mul(1000);
    Counters {
        cpu: CpuStats {
            cpu_usage: CpuUsage {
                total_usage: usec("usage_usec"),
                percpu_usage: vec![],
                usage_in_kernelmode: usec("system_usec"),
                usage_in_usermode: usec("user_usec"),
            },
            throttling_data: ThrottlingData {
                periods: get(&cpu, "nr_periods"),
                throttled_periods: get(&cpu, "nr_throttled"),
                throttled_time: usec("throttled_usec"),
            },
            ..CpuStats::default()
        },
        memory: MemoryStats {
            usage: read_u64(&dir.join("memory.current")).unwrap_or(0),
            max_usage: 0,
            stats: read_kv(&dir.join("memory.stat")),
            failcnt: 0,
            limit: clamp_limit(read_u64(&dir.join("memory.max")), host_memory),
        },
        pids: pids_stats(dir),
        blkio: v2_blkio(&dir.join("io.stat")),
    }
}

/// `io.stat` lines: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`.
fn v2_blkio(path: &Path) -> BlkioStats {
    let Ok(text) = fs::read_to_string(path) else { return BlkioStats::default() };
    let (mut bytes, mut ios) = (vec![], vec![]);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
        let values: BTreeMap<&str, u64> = fields
            .filter_map(|f| f.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let entry = |op: &str, key: &str| BlkioEntry {
            major,
            minor,
            op: op.to_owned(),
            value: values.get(key).copied().unwrap_or(0),
        };
        bytes.extend([entry("read", "rbytes"), entry("write", "wbytes")]);
        ios.extend([entry("read", "rios"), entry("write", "wios")]);
    }
    BlkioStats {
        io_service_bytes_recursive: Some(bytes),
        io_serviced_recursive: Some(ios),
        ..BlkioStats::default()
    }
}

fn pids_stats(dir: &Path) -> PidsStats {
    PidsStats {
        current: read_u64(&dir.join("pids.current")).unwrap_or(0),
        limit: read_u64(&dir.join("pids.max")).unwrap_or(0),
    }
}

/// Like Docker: no limit, or one above the host's memory, shows the host's memory.
fn clamp_limit(limit: Option<u64>, host_memory: u64) -> u64 {
    match limit {
        Some(l) if l > 0 && (host_memory == 0 || l <= host_memory) => l,
        _ => host_memory,
    }
}

/// `MemTotal` in bytes.
fn host_memory(proc_root: &Path) -> u64 {
    let text = fs::read_to_string(proc_root.join("meminfo")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The host's CPU time in ns as Docker counts it (user to softirq of the `cpu` line), and the
/// number of online CPUs (the `cpuN` lines).
fn host_cpu(proc_root: &Path) -> (u64, u32) {
    let text = fs::read_to_string(proc_root.join("stat")).unwrap_or_default();
    let mut total = 0;
    let mut online = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: u64 = fields.take(7).filter_map(|v| v.parse::<u64>().ok()).sum();
                total = ticks.saturating_mul(NS_PER_TICK);
            }
            Some(name) if name.starts_with("cpu") => online += 1,
            _ => {}
        }
    }
    (total, online)
}

/// `/proc/net/dev`: every interface but loopback.
pub fn parse_net_dev(text: &str) -> Interfaces {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let v: Vec<u64> = counters.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
            if name == "lo" || v.len() < 12 {
                return None;
            }
            Some((
                name.to_owned(),
                NetworkStats {
                    rx_bytes: v[0],
                    rx_packets: v[1],
                    rx_errors: v[2],
                    rx_dropped: v[3],
                    tx_bytes: v[8],
                    tx_packets: v[9],
                    tx_errors: v[10],
                    tx_dropped: v[11],
                },
            ))
        })
        .collect()
}

/// Reads `/proc/net/dev` as the namespace at `netns` sees it, from a short-lived thread that
/// enters it (`/proc/self/net` would show the process's namespace, not the thread's).
pub fn read_net_dev_in_netns(netns: &Path) -> io::Result<String> {
    super::server::in_netns(netns, || fs::read_to_string("/proc/thread-self/net/dev"))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines, as in `memory.stat` and `cpu.stat`.
fn read_kv(path: &Path) -> BTreeMap<String, u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn get(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::metadata::tests::{DOCKER_ID, awsvpc_task};

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0
  eth0:    1296      16    1    2    0     0          0         0     1046      13    3    4    0     0       0          0
";

    fn fake_net_dev(_: &Path) -> io::Result<String> {
        Ok(NET_DEV.to_owned())
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn fake_proc(root: &Path) {
        write(
            root,
            "stat",
            "cpu  100 0 50 1000 10 0 5 7 0 0\ncpu0 50 0 25 500 5 0 2 0 0 0\ncpu1 50 0 25 500 5 0 3 0 0 0\nintr 1\n",
        );
        write(root, "meminfo", "MemTotal:        2048000 kB\nMemFree: 1 kB\n");
    }

    fn fake_v1(root: &Path, task_id: &str) {
        let c = format!("ecs/{task_id}/{DOCKER_ID}");
        write(root, &format!("cpuacct/{c}/cpuacct.usage"), "123456789\n");
        write(root, &format!("cpuacct/{c}/cpuacct.usage_percpu"), "100000000 23456789 \n");
        write(root, &format!("cpuacct/{c}/cpuacct.stat"), "user 7\nsystem 3\n");
        write(root, &format!("cpu/{c}/cpu.stat"), "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n");
        write(root, &format!("memory/{c}/memory.usage_in_bytes"), "4096000\n");
        write(root, &format!("memory/{c}/memory.max_usage_in_bytes"), "8192000\n");
        write(root, &format!("memory/{c}/memory.failcnt"), "0\n");
        write(root, &format!("memory/{c}/memory.limit_in_bytes"), "9223372036854771712\n");
        write(root, &format!("memory/{c}/memory.stat"), "cache 1024\nrss 2048\ntotal_rss 2048\n");
        write(root, &format!("pids/{c}/pids.current"), "3\n");
        write(root, &format!("pids/{c}/pids.max"), "max\n");
        write(
            root,
            &format!("blkio/{c}/blkio.throttle.io_service_bytes"),
            "8:0 Read 4096\n8:0 Write 512\n8:0 Total 4608\nTotal 4608\n",
        );
        write(root, &format!("blkio/{c}/blkio.throttle.io_serviced"), "8:0 Read 2\n8:0 Write 1\nTotal 3\n");
    }

    #[test]
    fn v1_cgroup_in_docker_shape() {
        let (cg, proc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let task = awsvpc_task();
        fake_v1(cg.path(), &task.id);
        fake_proc(proc.path());
        let sampler = StatsSampler::new(cg.path(), proc.path()).with_net_dev_reader(fake_net_dev);
        let first = sampler.container(&task, &task.containers[0], Version::V4).unwrap();
        let text = serde_json::to_string(&first).unwrap();
        let keys = [
            "read",
            "preread",
            "pids_stats",
            "blkio_stats",
            "num_procs",
            "storage_stats",
            "cpu_stats",
            "precpu_stats",
            "memory_stats",
            "name",
            "id",
            "networks",
        ];
        let at: Vec<usize> = keys.iter().map(|k| text.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(!text.contains("network_rate_stats"), "{text}");
        let v = serde_json::to_value(&first).unwrap();
        assert_eq!(v["preread"], GO_ZERO_TIME);
        assert_eq!(v["pids_stats"], serde_json::json!({"current": 3}));
        assert_eq!(v["storage_stats"], serde_json::json!({}));
        assert_eq!(v["num_procs"], 0);
        assert_eq!(
            v["cpu_stats"],
            serde_json::json!({
                "cpu_usage": {"total_usage": 123456789u64, "percpu_usage": [100000000u64, 23456789u64],
                              "usage_in_kernelmode": 30000000u64, "usage_in_usermode": 70000000u64},
                "system_cpu_usage": 11650000000u64, "online_cpus": 2,
                "throttling_data": {"periods": 10, "throttled_periods": 2, "throttled_time": 5000}
            })
        );
        assert_eq!(
            v["precpu_stats"],
            serde_json::json!({
                "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}
            })
        );
        assert_eq!(
            v["memory_stats"],
            serde_json::json!({"usage": 4096000, "max_usage": 8192000,
                               "stats": {"cache": 1024, "rss": 2048, "total_rss": 2048}, "limit": 2097152000u64})
        );
        assert_eq!(
            v["blkio_stats"]["io_service_bytes_recursive"],
            serde_json::json!([
                {"major": 8, "minor": 0, "op": "Read", "value": 4096},
                {"major": 8, "minor": 0, "op": "Write", "value": 512},
                {"major": 8, "minor": 0, "op": "Total", "value": 4608}
            ])
        );
        assert_eq!(v["blkio_stats"]["io_serviced_recursive"].as_array().unwrap().len(), 2);
        assert_eq!(v["blkio_stats"]["sectors_recursive"], serde_json::json!([]));
        assert_eq!(v["name"], format!("/{}", docker_name(&task, &task.containers[0])));
        assert_eq!(v["id"], DOCKER_ID);
        assert_eq!(
            v["networks"],
            serde_json::json!({"eth0": {"rx_bytes": 1296, "rx_packets": 16, "rx_errors": 1, "rx_dropped": 2,
                                        "tx_bytes": 1046, "tx_packets": 13, "tx_errors": 3, "tx_dropped": 4}})
        );

        // The second sample carries the first as precpu, and a network rate (v4 only).
        let second = sampler.container(&task, &task.containers[0], Version::V4).unwrap();
        assert_eq!(second.preread, first.read);
        assert_eq!(second.precpu_stats, first.cpu_stats);
        assert_eq!(second.network_rate_stats.map(|r| r.rx_bytes_per_sec), Some(0.0));
        let v3 = sampler.container(&task, &task.containers[0], Version::V3).unwrap();
        assert!(v3.network_rate_stats.is_none());
    }

    #[test]
    fn v2_cgroup_and_missing_cgroups() {
        let (cg, proc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut task = awsvpc_task();
        task.definition.network_mode = Some("host".into());
        fake_proc(proc.path());
        let sampler = StatsSampler::new(cg.path(), proc.path()).with_net_dev_reader(fake_net_dev);
        assert!(sampler.container(&task, &task.containers[0], Version::V4).is_none());
        write(cg.path(), "cgroup.controllers", "cpu memory pids io\n");
        let c = format!("ecs/{}/{DOCKER_ID}", task.id);
        write(
            cg.path(),
            &format!("{c}/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 7\n",
        );
        write(cg.path(), &format!("{c}/memory.current"), "1048576\n");
        write(cg.path(), &format!("{c}/memory.max"), "max\n");
        write(cg.path(), &format!("{c}/memory.stat"), "anon 4096\nfile 0\n");
        write(cg.path(), &format!("{c}/pids.current"), "1\n");
        write(cg.path(), &format!("{c}/pids.max"), "100\n");
        write(cg.path(), &format!("{c}/io.stat"), "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n");
        let v = serde_json::to_value(sampler.container(&task, &task.containers[0], Version::V4).unwrap())
            .unwrap();
        assert_eq!(v["cpu_stats"]["cpu_usage"]["total_usage"], 1_500_000);
        assert_eq!(v["cpu_stats"]["cpu_usage"]["usage_in_usermode"], 1_000_000);
        assert!(v["cpu_stats"]["cpu_usage"].get("percpu_usage").is_none());
        assert_eq!(v["cpu_stats"]["throttling_data"]["throttled_time"], 7000);
        assert_eq!(
            v["memory_stats"],
            serde_json::json!({"usage": 1048576, "stats": {"anon": 4096, "file": 0}, "limit": 2097152000u64})
        );
        assert_eq!(v["pids_stats"], serde_json::json!({"current": 1, "limit": 100}));
        assert_eq!(
            v["blkio_stats"]["io_service_bytes_recursive"],
            serde_json::json!([{"major": 8, "minor": 0, "op": "read", "value": 10}, {"major": 8, "minor": 0, "op": "write", "value": 20}])
        );
        assert!(v["blkio_stats"]["io_queue_recursive"].is_null());
        // Host mode: no networks, as Docker.
        assert!(v.get("networks").is_none() && v.get("network_rate_stats").is_none());
        let all = sampler.task(&task, Version::V3);
        assert_eq!(all.keys().collect::<Vec<_>>(), [DOCKER_ID]);
        assert!(all[DOCKER_ID].is_some());
    }

    #[test]
    fn net_dev_skips_loopback_and_headers() {
        let parsed = parse_net_dev(NET_DEV);
        assert_eq!(parsed.keys().collect::<Vec<_>>(), ["eth0"]);
        assert!(parse_net_dev("garbage\n  x: 1 2\n").is_empty());
    }
}

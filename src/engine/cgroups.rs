//! Task cgroups: `/ecs/<task id>`, the parent of the task's container cgroups, carrying the
//! task-level cpu and memory limits the way the ECS agent sets them (cgroup v1 `cpu` and
//! `memory` hierarchies, or the unified v2 tree). Containers use `/ecs/<task id>/<runtime id>`
//! as their cgroups path, so the task's limits bound them all together.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// CFS period the agent uses (`ECS_CGROUP_CPU_PERIOD`, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Limits of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// Task `cpu` in units (1024 = one vCPU): a CFS quota.
    pub cpu_units: Option<u64>,
    /// Without task `cpu`: the sum of the containers' shares, as the agent does.
    pub shares: u64,
    /// Task `memory` in MiB: a hard limit.
    pub memory_mib: Option<u64>,
}

/// Where cgroups are mounted (a parameter, so tests can point elsewhere).
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    pub fn new(root: &Path) -> Cgroups {
        Cgroups { root: root.to_owned() }
    }

    fn unified(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// The directories of the task's cgroup: one per v1 controller, or one in v2.
    fn dirs(&self, task_id: &str) -> Vec<PathBuf> {
        if self.unified() {
            vec![self.root.join("ecs").join(task_id)]
        } else {
            ["cpu", "memory"].iter().map(|c| self.root.join(c).join("ecs").join(task_id)).collect()
        }
    }

    /// Creates the task's cgroup with its limits.
    pub fn apply(&self, task_id: &str, limits: TaskLimits) -> io::Result<()> {
        if self.unified() {
            let parent = self.root.join("ecs");
            fs::create_dir_all(&parent)?;
            // Controllers must be delegated to the children before they can be limited.
            let _ = fs::write(self.root.join("cgroup.subtree_control"), "+cpu +memory");
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+cpu +memory");
            let dir = parent.join(task_id);
            fs::create_dir_all(&dir)?;
            match limits.cpu_units {
                Some(units) => fs::write(dir.join("cpu.max"), format!("{} {CPU_PERIOD_US}", quota(units)))?,
                // cgroup v2 weight from v1 shares, as runc converts them.
                None => fs::write(dir.join("cpu.weight"), weight(limits.shares).to_string())?,
            }
            if let Some(mib) = limits.memory_mib {
                fs::write(dir.join("memory.max"), (mib * 1024 * 1024).to_string())?;
            }
            return Ok(());
        }
        let cpu = self.root.join("cpu").join("ecs").join(task_id);
        fs::create_dir_all(&cpu)?;
        match limits.cpu_units {
            Some(units) => {
                fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                fs::write(cpu.join("cpu.cfs_quota_us"), quota(units).to_string())?;
            }
            None => fs::write(cpu.join("cpu.shares"), limits.shares.to_string())?,
        }
        let memory = self.root.join("memory").join("ecs").join(task_id);
        fs::create_dir_all(&memory)?;
        if let Some(mib) = limits.memory_mib {
            fs::write(memory.join("memory.limit_in_bytes"), (mib * 1024 * 1024).to_string())?;
        }
        Ok(())
    }

    /// Removes the task's cgroups (and the container cgroups runc left, empty, inside), in
    /// every hierarchy runc may have made them. Gone already is fine.
    pub fn remove(&self, task_id: &str) -> io::Result<()> {
        let mut dirs = self.dirs(task_id);
        if !self.unified()
            && let Ok(entries) = fs::read_dir(&self.root)
        {
            for e in entries.flatten() {
                let d = e.path().join("ecs").join(task_id);
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        let mut first_error = None;
        for dir in dirs {
            if !dir.is_dir() {
                continue;
            }
            if let Ok(children) = fs::read_dir(&dir) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = fs::remove_dir(c.path());
                }
            }
            if let Err(e) = fs::remove_dir(&dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn quota(units: u64) -> u64 {
    // The kernel refuses quotas under 1 ms.
    (units * CPU_PERIOD_US / 1024).max(1000)
}

fn weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_limits_land_in_cpu_and_memory() {
        let root = tempfile::tempdir().unwrap();
        let c = Cgroups::new(root.path());
        c.apply("t1", TaskLimits { cpu_units: Some(512), shares: 0, memory_mib: Some(256) }).unwrap();
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cpu/ecs/t1/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/ecs/t1/cpu.cfs_period_us"), "100000");
        assert_eq!(read("memory/ecs/t1/memory.limit_in_bytes"), "268435456");
        c.apply("t2", TaskLimits { cpu_units: None, shares: 4, memory_mib: None }).unwrap();
        assert_eq!(read("cpu/ecs/t2/cpu.shares"), "4");
        fs::create_dir_all(root.path().join("pids/ecs/t1/abc")).unwrap();
        // On cgroupfs the control files go with their directory; a plain directory needs them
        // removed first.
        for f in [
            "cpu/ecs/t1/cpu.cfs_quota_us",
            "cpu/ecs/t1/cpu.cfs_period_us",
            "memory/ecs/t1/memory.limit_in_bytes",
        ] {
            fs::remove_file(root.path().join(f)).unwrap();
        }
        c.remove("t1").unwrap();
        assert!(!root.path().join("cpu/ecs/t1").exists());
        assert!(!root.path().join("pids/ecs/t1").exists());
        c.remove("t1").unwrap();
    }

    #[test]
    fn v2_limits_land_in_the_unified_tree() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let c = Cgroups::new(root.path());
        c.apply("t", TaskLimits { cpu_units: Some(2048), shares: 0, memory_mib: Some(1024) }).unwrap();
        assert_eq!(fs::read_to_string(root.path().join("ecs/t/cpu.max")).unwrap(), "200000 100000");
        assert_eq!(fs::read_to_string(root.path().join("ecs/t/memory.max")).unwrap(), "1073741824");
        assert_eq!(weight(1024), 39);
    }
}

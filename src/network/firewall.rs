//! ecs-init's host firewall rules, as ecsd adds them when it runs as root: the localhost
//! traffic filter (with `route_localnet`, as ecs-init sets it) and the block of off-host
//! access to the introspection port.
//!
//! Every rule carries the comment `ecsd:<namespace>`, so ecsd only ever deletes rules it
//! added, and an ecsd on another containerd namespace keeps its own. [`HostFirewall::apply`]
//! first deletes what a crashed run left (found by that comment), then adds the rules once:
//! a restart after `kill -9` never duplicates them. [`HostFirewall::remove`] deletes them and
//! restores `route_localnet` as ecs-init's post-stop does.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{NetworkError, Runner, XTABLES_WAIT_SECS};

/// Which rules to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallPlan {
    /// Drop packets to 127.0.0.0/8 from outside it unless DNAT'd or part of a connection;
    /// sets `net.ipv4.conf.all.route_localnet=1` as ecs-init does.
    pub localhost_filter: bool,
    /// Drop TCP packets to this port that do not arrive on loopback (IPv4 and IPv6).
    pub introspection_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot change the host's firewall rules")]
    Rules(#[source] NetworkError),
    #[error("cannot read or write {}", path.display())]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host's rules of one ecsd.
#[derive(Debug, Clone)]
pub struct HostFirewall {
    runner: Arc<dyn Runner>,
    tag: String,
    plan: FirewallPlan,
    /// `/proc/sys`, or a directory standing in for it.
    proc_sys: PathBuf,
}

/// `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl HostFirewall {
    /// The rules of the ecsd whose containerd namespace is `namespace`.
    pub fn new(
        runner: Arc<dyn Runner>,
        namespace: &str,
        plan: FirewallPlan,
        proc_sys: &Path,
    ) -> HostFirewall {
        HostFirewall { runner, tag: format!("ecsd:{namespace}"), plan, proc_sys: proc_sys.to_owned() }
    }

    /// The comment every rule of this ecsd carries.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn route_localnet(&self, which: &str) -> PathBuf {
        self.proc_sys.join("net/ipv4/conf").join(which).join("route_localnet")
    }

    fn ipv6(&self) -> bool {
        self.proc_sys.join("net/ipv6").exists()
    }

    /// Removes leftovers of an earlier run, then adds the planned rules (inserted at the top
    /// of INPUT, as ecs-init inserts them).
    pub async fn apply(&self) -> Result<(), FirewallError> {
        self.delete_tagged(Family::V4).await?;
        if self.ipv6() {
            self.delete_tagged(Family::V6).await?;
        }
        if self.plan.localhost_filter {
            let path = self.route_localnet("all");
            std::fs::write(&path, "1").map_err(|source| FirewallError::Sysctl { path, source })?;
            let rule = [
                "-d",
                "127.0.0.0/8",
                "!",
                "-s",
                "127.0.0.0/8",
                "-m",
                "conntrack",
                "!",
                "--ctstate",
                "RELATED,ESTABLISHED,DNAT",
            ];
            self.insert(Family::V4, &rule).await?;
        }
        if let Some(port) = self.plan.introspection_port {
            let port = port.to_string();
            let rule = ["-p", "tcp", "--dport", port.as_str(), "!", "-i", "lo"];
            self.insert(Family::V4, &rule).await?;
            if self.ipv6() {
                self.insert(Family::V6, &rule).await?;
            }
        }
        Ok(())
    }

    /// Deletes this ecsd's rules and, when it set it, restores `route_localnet` to the
    /// default interface's value. Keeps going past a failure and returns the first.
    pub async fn remove(&self) -> Result<(), FirewallError> {
        let mut first = None;
        for family in [Family::V4, Family::V6] {
            if family == Family::V6 && !self.ipv6() {
                continue;
            }
            if let Err(e) = self.delete_tagged(family).await {
                first.get_or_insert(e);
            }
        }
        if self.plan.localhost_filter {
            let default = self.route_localnet("default");
            let all = self.route_localnet("all");
            let restored = std::fs::read_to_string(&default)
                .map_err(|source| FirewallError::Sysctl { path: default, source })
                .and_then(|v| {
                    std::fs::write(&all, v.trim())
                        .map_err(|source| FirewallError::Sysctl { path: all, source })
                });
            if let Err(e) = restored {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// After an ecsd that did not stop cleanly (systemd's `ExecStopPost`): when any rule of
    /// this ecsd is left, removes them as [`HostFirewall::remove`] does. Returns whether
    /// there were any.
    pub async fn remove_leftovers(&self) -> Result<bool, FirewallError> {
        let mut any = false;
        for family in [Family::V4, Family::V6] {
            if family == Family::V6 && !self.ipv6() {
                continue;
            }
            let listing = self.iptables(family, &["-S", "INPUT"]).await?;
            any |= !tagged_rules(&String::from_utf8_lossy(&listing), &self.tag).is_empty();
        }
        if any {
            self.remove().await?;
        }
        Ok(any)
    }

    async fn iptables(&self, family: Family, args: &[&str]) -> Result<Vec<u8>, FirewallError> {
        let mut all: Vec<&OsStr> =
            vec![OsStr::new("-w"), OsStr::new(XTABLES_WAIT_SECS), OsStr::new("-t"), OsStr::new("filter")];
        all.extend(args.iter().map(OsStr::new));
        self.runner.run(OsStr::new(family.program()), &all, None).await.map_err(FirewallError::Rules)
    }

    async fn insert(&self, family: Family, rule: &[&str]) -> Result<(), FirewallError> {
        let tagged =
            [&["-I", "INPUT"], rule, &["-m", "comment", "--comment", self.tag.as_str(), "-j", "DROP"]]
                .concat();
        self.iptables(family, &tagged).await.map(drop)
    }

    /// Deletes every INPUT rule whose comment is this ecsd's tag, as `iptables -S` prints it.
    async fn delete_tagged(&self, family: Family) -> Result<(), FirewallError> {
        let listing = self.iptables(family, &["-S", "INPUT"]).await?;
        for rule in tagged_rules(&String::from_utf8_lossy(&listing), &self.tag) {
            let mut args: Vec<&str> = vec!["-D", "INPUT"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = self.iptables(family, &args).await {
                // Another ecsd of the same namespace (a start racing a stop) may have deleted
                // it first: only a rule that is still there is a failure.
                let now = self.iptables(family, &["-S", "INPUT"]).await?;
                if tagged_rules(&String::from_utf8_lossy(&now), &self.tag).contains(&rule) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// The rule specs (after `-A INPUT`) of `iptables -S INPUT` lines whose comment is `tag`.
pub fn tagged_rules(listing: &str, tag: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|line| {
            let words = split_words(line);
            let rest = words.strip_prefix(&["-A".to_owned(), "INPUT".to_owned()][..])?;
            let tagged = rest.windows(2).any(|w| w[0] == "--comment" && w[1] == tag);
            tagged.then(|| rest.to_vec())
        })
        .collect()
}

/// Splits a line as iptables quotes it: words, with `"…"` holding spaces and `\"`.
fn split_words(line: &str) -> Vec<String> {
    let mut words = vec![];
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// INPUT of the filter table for each family, as iptables keeps and prints it.
    #[derive(Debug, Default)]
    struct Tables {
        v4: Mutex<Vec<String>>,
        v6: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Runner for Tables {
        async fn run(
            &self,
            program: &OsStr,
            args: &[&OsStr],
            _: Option<&[u8]>,
        ) -> Result<Vec<u8>, NetworkError> {
            let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let rules = if program == "iptables" { &self.v4 } else { &self.v6 };
            let mut rules = rules.lock().unwrap();
            assert_eq!(&args[..4], ["-w", XTABLES_WAIT_SECS, "-t", "filter"]);
            let quote = |spec: &[String]| {
                spec.iter()
                    .map(|w| if w.contains(':') { format!("\"{w}\"") } else { w.clone() })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            match (args[4].as_str(), args[5].as_str()) {
                ("-S", "INPUT") => {
                    let mut out = "-P INPUT ACCEPT\n".to_owned();
                    for r in rules.iter() {
                        out.push_str(&format!("-A INPUT {r}\n"));
                    }
                    Ok(out.into_bytes())
                }
                ("-I", "INPUT") => {
                    rules.insert(0, quote(&args[6..]));
                    Ok(vec![])
                }
                ("-D", "INPUT") => {
                    let spec = quote(&args[6..]);
                    match rules.iter().position(|r| *r == spec) {
                        Some(i) => {
                            rules.remove(i);
                            Ok(vec![])
                        }
                        None => Err(NetworkError::Command {
                            command: args.join(" "),
                            stderr: "Bad rule (does a matching rule exist in that chain?)".into(),
                        }),
                    }
                }
                _ => panic!("unexpected iptables call {args:?}"),
            }
        }
    }

    fn proc_sys(ipv6: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for which in ["all", "default"] {
            let d = dir.path().join("net/ipv4/conf").join(which);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("route_localnet"), "0\n").unwrap();
        }
        if ipv6 {
            std::fs::create_dir_all(dir.path().join("net/ipv6")).unwrap();
        }
        dir
    }

    const OTHERS: &str = "-p tcp -m tcp --dport 22 -j ACCEPT";

    #[tokio::test]
    async fn apply_is_idempotent_and_remove_deletes_only_its_own() {
        let sys = proc_sys(true);
        let tables = Arc::new(Tables::default());
        tables.v4.lock().unwrap().push(OTHERS.to_owned());
        tables
            .v4
            .lock()
            .unwrap()
            .push("-p tcp --dport 1 -m comment --comment \"ecsd:other\" -j DROP".to_owned());
        let plan = FirewallPlan { localhost_filter: true, introspection_port: Some(51678) };
        let fw = HostFirewall::new(tables.clone(), "ecs", plan, sys.path());
        fw.apply().await.unwrap();
        let after_once = tables.v4.lock().unwrap().clone();
        assert_eq!(after_once.len(), 4, "{after_once:?}");
        assert_eq!(after_once[0], "-p tcp --dport 51678 ! -i lo -m comment --comment \"ecsd:ecs\" -j DROP");
        assert_eq!(
            after_once[1],
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment \"ecsd:ecs\" -j DROP"
        );
        assert_eq!(tables.v6.lock().unwrap().len(), 1);
        let all = sys.path().join("net/ipv4/conf/all/route_localnet");
        assert_eq!(std::fs::read_to_string(&all).unwrap(), "1");

        // A second start (after kill -9) finds its rules and adds them once.
        fw.apply().await.unwrap();
        assert_eq!(*tables.v4.lock().unwrap(), after_once);
        assert_eq!(tables.v6.lock().unwrap().len(), 1);

        fw.remove().await.unwrap();
        assert_eq!(
            *tables.v4.lock().unwrap(),
            [OTHERS, "-p tcp --dport 1 -m comment --comment \"ecsd:other\" -j DROP"]
        );
        assert!(tables.v6.lock().unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&all).unwrap(), "0");
    }

    /// Tables whose first `-D` finds the rule gone: another ecsd deleted it after the listing.
    #[derive(Debug, Default)]
    struct Racing {
        tables: Tables,
        raced: Mutex<bool>,
    }

    #[async_trait]
    impl Runner for Racing {
        async fn run(
            &self,
            program: &OsStr,
            args: &[&OsStr],
            input: Option<&[u8]>,
        ) -> Result<Vec<u8>, NetworkError> {
            let delete = args.get(4).is_some_and(|a| *a == "-D");
            if delete && !std::mem::replace(&mut *self.raced.lock().unwrap(), true) {
                self.tables.v4.lock().unwrap().clear();
            }
            self.tables.run(program, args, input).await
        }
    }

    #[tokio::test]
    async fn a_rule_another_ecsd_deleted_first_is_not_a_failure() {
        let sys = proc_sys(false);
        let racing = Arc::new(Racing::default());
        let plan = FirewallPlan { localhost_filter: false, introspection_port: Some(51678) };
        let fw = HostFirewall::new(racing.clone(), "ecs", plan, sys.path());
        fw.apply().await.unwrap();
        fw.apply().await.unwrap();
        assert_eq!(racing.tables.v4.lock().unwrap().len(), 1);
        // A rule that stays after a failed delete is still an error.
        let stuck = Arc::new(Tables::default());
        // Spaced so the fake cannot match its delete: it stays.
        stuck.v4.lock().unwrap().push("-p tcp  --dport 9 -m comment --comment \"ecsd:ecs\" -j DROP".into());
        let fw = HostFirewall::new(stuck, "ecs", plan, sys.path());
        assert!(matches!(fw.remove().await, Err(FirewallError::Rules(_))));
    }

    #[tokio::test]
    async fn leftovers_are_removed_and_route_localnet_restored_only_when_there_are_any() {
        let sys = proc_sys(true);
        let all = sys.path().join("net/ipv4/conf/all/route_localnet");
        let tables = Arc::new(Tables::default());
        let plan = FirewallPlan { localhost_filter: true, introspection_port: Some(51678) };
        HostFirewall::new(tables.clone(), "ecs", plan, sys.path()).apply().await.unwrap();
        // What ExecStopPost runs knows no port: the tag finds the rules.
        let after_crash = FirewallPlan { localhost_filter: true, introspection_port: None };
        let fw = HostFirewall::new(tables.clone(), "ecs", after_crash, sys.path());
        assert!(fw.remove_leftovers().await.unwrap());
        assert!(tables.v4.lock().unwrap().is_empty() && tables.v6.lock().unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&all).unwrap(), "0");
        // Nothing left: route_localnet (set by someone else) is not touched.
        std::fs::write(&all, "1").unwrap();
        assert!(!fw.remove_leftovers().await.unwrap());
        assert_eq!(std::fs::read_to_string(&all).unwrap(), "1");
    }

    #[tokio::test]
    async fn the_skip_variables_leave_their_rule_out() {
        let sys = proc_sys(false);
        let tables = Arc::new(Tables::default());
        let plan = FirewallPlan { localhost_filter: false, introspection_port: Some(51678) };
        HostFirewall::new(tables.clone(), "ecs", plan, sys.path()).apply().await.unwrap();
        assert_eq!(tables.v4.lock().unwrap().len(), 1);
        assert!(tables.v4.lock().unwrap()[0].contains("--dport 51678"));
        let all = sys.path().join("net/ipv4/conf/all/route_localnet");
        assert_eq!(std::fs::read_to_string(&all).unwrap(), "0\n", "route_localnet is left alone");

        let tables = Arc::new(Tables::default());
        let plan = FirewallPlan { localhost_filter: true, introspection_port: None };
        HostFirewall::new(tables.clone(), "ecs", plan, sys.path()).apply().await.unwrap();
        assert_eq!(tables.v4.lock().unwrap().len(), 1);
        assert!(tables.v4.lock().unwrap()[0].starts_with("-d 127.0.0.0/8"));
    }

    #[test]
    fn listings_are_split_as_iptables_quotes() {
        let listing = "-P INPUT ACCEPT\n\
                       -A INPUT ! -i lo -p tcp -m tcp --dport 51678 -m comment --comment \"ecsd:ecs\" -j DROP\n\
                       -A INPUT -m comment --comment \"ecsd:ecs-2\" -j DROP\n\
                       -A INPUT -m comment --comment \"a \\\"quoted\\\" ecsd:ecs\" -j ACCEPT\n\
                       -A FORWARD -m comment --comment \"ecsd:ecs\" -j DROP\n";
        assert_eq!(
            tagged_rules(listing, "ecsd:ecs"),
            [[
                "!",
                "-i",
                "lo",
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                "51678",
                "-m",
                "comment",
                "--comment",
                "ecsd:ecs",
                "-j",
                "DROP"
            ]]
        );
        assert_eq!(
            split_words("-m comment --comment \"a \\\"b\\\" c\""),
            ["-m", "comment", "--comment", "a \"b\" c"]
        );
    }
}

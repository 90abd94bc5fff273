//! A place outside every ecsd network for tests of outbound connectivity: a network namespace
//! of the test's own, on a veth pair to the host's. Its subnets, `10.251.<n>.0/30`, are no
//! other test's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

/// A network namespace outside every ecsd network: a veth pair to the host's namespace
/// (`10.251.<n>.1/30` on the host, `10.251.<n>.2/30` inside) and a tiny HTTP server in it on
/// a free port. Dropping it stops the server and deletes the namespace (the veth goes with it).
pub struct Outside {
    netns: String,
    pub addr: String,
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Outside {
    pub async fn start(n: u32) -> Outside {
        let netns = format!("ecsd-t-outside{}-{n}", std::process::id());
        let host_if = format!("ecsdo{n}h");
        let (host_addr, addr) = (format!("10.251.{n}.1"), format!("10.251.{n}.2"));
        let mut outside = Outside {
            netns: netns.clone(),
            addr: addr.clone(),
            port: 0,
            stop: Default::default(),
            server: None,
        };
        for argv in [
            vec!["netns", "add", &netns],
            vec!["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns],
            vec!["addr", "add", &format!("{host_addr}/30"), "dev", &host_if],
            vec!["link", "set", &host_if, "up"],
            vec!["-n", &netns, "addr", "add", &format!("{addr}/30"), "dev", "eth0"],
            vec!["-n", &netns, "link", "set", "eth0", "up"],
            vec!["-n", &netns, "link", "set", "lo", "up"],
        ] {
            let out = ip(&argv);
            assert!(out.status.success(), "ip {argv:?}: {out:?}");
        }
        let path = Path::new("/run/netns").join(&netns);
        let bind: std::net::Ipv4Addr = addr.parse().unwrap();
        let listener = ecsd::network::netns::in_netns(&path, move || {
            let l = std::net::TcpListener::bind((bind, 0))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await
        .unwrap();
        outside.port = listener.local_addr().unwrap().port();
        let stop = outside.stop.clone();
        outside.server = Some(std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        let _ = c.read(&mut [0u8; 1024]);
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\nhello, outside\n");
                    }
                    // Polled, so the listener (which keeps the namespace alive) closes on drop.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }));
        outside
    }

    /// `ADDR:PORT` of the server.
    pub fn target(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// `ADDR:PORT` where nothing listens.
    pub fn closed(&self) -> String {
        format!("{}:{}", self.addr, if self.port == 65535 { 65534 } else { self.port + 1 })
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let _ = ip(&["netns", "delete", &self.netns]);
    }
}

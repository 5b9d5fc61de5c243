//! A real `redis-server` process for tests, on its own port and temp dir, that can be
//! stopped and restarted on the same port; a real Redis Cluster of such processes; plus a tiny
//! blocking RESP client to inspect them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::free_port;

/// How often and how long [`RedisServer`] polls for `+PONG` after spawning.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const POLL_TRIES: u32 = 400;
/// Fresh ports tried when the one picked was taken before redis could bind it.
const START_ATTEMPTS: u32 = 3;

/// A `redis-server` child process. Dropping it kills the process and removes its temp dir.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

enum LaunchError {
    Exited(ExitStatus),
    NoPong,
}

impl RedisServer {
    /// Starts `redis-server` (from PATH, else /usr/bin) on a free port of 127.0.0.1 without
    /// persistence, and waits until it answers PING.
    pub fn start() -> RedisServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chatgate-test-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut server = RedisServer {
            binary: find_redis_server(),
            port: 0,
            dir,
            child: None,
        };
        for attempt in 1..=START_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::Exited(_)) if attempt < START_ATTEMPTS => continue,
                Err(e) => server.fail(e),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it; connecting is refused afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if running and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            self.fail(e);
        }
    }

    /// Sends one command and returns the reply; panics if the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Resp {
        send_command(self.port, args)
            .unwrap_or_else(|e| panic!("redis at {} on {args:?}: {e}", self.addr()))
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", self.binary.display()));
        let child = self.child.insert(child);
        for _ in 0..POLL_TRIES {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(LaunchError::Exited(status));
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.stop();
        Err(LaunchError::NoPong)
    }

    fn fail(&mut self, error: LaunchError) -> ! {
        let what = match error {
            LaunchError::Exited(status) => format!("exited ({status})"),
            LaunchError::NoPong => format!(
                "did not answer PING within {:?}",
                POLL_INTERVAL * POLL_TRIES
            ),
        };
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        panic!(
            "{} on 127.0.0.1:{} {what}; its log:\n{log}",
            self.binary.display(),
            self.port
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_redis_server() -> PathBuf {
    super::find_program("redis-server", "/usr/bin/redis-server", "redis-server")
}

/// Sends one command to the server on `port` of 127.0.0.1 and reads its reply.
fn send_command(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;
    read_reply(&mut BufReader::new(stream))
}

fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && reply == *b"+PONG\r\n"
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a simple-string or (non-nil) bulk reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| invalid("empty reply".into()))?;
    let length = || {
        rest.parse::<i64>()
            .map_err(|e| invalid(format!("{line:?}: {e}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(length()?),
        "$" => match usize::try_from(length()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Resp::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(length()?) {
            Err(_) => Resp::Array(None),
            Ok(len) => Resp::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(invalid(format!("unknown reply {line:?}"))),
    })
}

/// A local Redis Cluster: `n` primaries of `redis-server --cluster-enabled yes` on free ports,
/// slots split evenly, no replicas. It is formed with `CLUSTER ADDSLOTS` and `CLUSTER MEET` —
/// what `redis-cli --cluster create` sends — because each node's bus port is picked explicitly
/// (the default, port + 10000, may not exist or be free). The cluster configuration lives in a
/// temp dir, so `stop` and `restart` bring back the same cluster.
pub struct RedisCluster {
    binary: PathBuf,
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    port: u16,
    bus: u16,
    process: Option<Child>,
}

const SLOTS: usize = 16384;

impl RedisCluster {
    /// Starts `n` nodes, assigns the slots and waits until every node says `cluster_state:ok`.
    pub fn start(n: usize) -> RedisCluster {
        let mut cluster = RedisCluster {
            binary: find_redis_server(),
            nodes: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for _ in 0..n {
            let node = (0..5)
                .find_map(|_| {
                    let (port, bus) = (free_port(), free_port());
                    let process = cluster.spawn(port, bus)?;
                    Some(ClusterNode {
                        port,
                        bus,
                        process: Some(process),
                    })
                })
                .expect("cluster node did not start");
            cluster.nodes.push(node);
        }
        let (first, first_bus) = (cluster.nodes[0].port, cluster.nodes[0].bus);
        for (i, node) in cluster.nodes.iter().enumerate() {
            let slots: Vec<String> = (i * SLOTS / n..(i + 1) * SLOTS / n)
                .map(|slot| slot.to_string())
                .collect();
            let mut addslots = vec!["CLUSTER", "ADDSLOTS"];
            addslots.extend(slots.iter().map(String::as_str));
            expect_ok(node.port, &addslots);
            let (first, first_bus) = (first.to_string(), first_bus.to_string());
            expect_ok(
                node.port,
                &["CLUSTER", "MEET", "127.0.0.1", &first, &first_bus],
            );
        }
        cluster.wait_until_formed();
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…`, the form `store.redis_url` takes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Keys held by each node.
    pub fn key_counts(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|node| match send_command(node.port, &["DBSIZE"]) {
                Ok(Resp::Integer(n)) => usize::try_from(n).expect("DBSIZE"),
                other => panic!("DBSIZE on {}: {other:?}", node.port),
            })
            .collect()
    }

    /// Sends a single-key command to the node that owns the key (following `MOVED`).
    pub fn command(&self, args: &[&str]) -> Resp {
        let mut last = None;
        for node in &self.nodes {
            match send_command(node.port, args) {
                Ok(Resp::Error(e)) if e.starts_with("MOVED") => last = Some(Resp::Error(e)),
                Ok(reply) => return reply,
                Err(e) => panic!("cluster node {} on {args:?}: {e}", node.port),
            }
        }
        panic!("no node owns {args:?}: {last:?}")
    }

    /// Kills every node (SIGKILL, like a crash).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
        }
    }

    /// Starts every node again on its ports and waits until the cluster is whole.
    pub fn restart(&mut self) {
        self.stop();
        for i in 0..self.nodes.len() {
            let (port, bus) = (self.nodes[i].port, self.nodes[i].bus);
            let process = self.spawn(port, bus).expect("cluster node did not restart");
            self.nodes[i].process = Some(process);
        }
        self.wait_until_formed();
    }

    fn wait_until_formed(&self) {
        let n = self.nodes.len();
        let known = format!("cluster_known_nodes:{n}");
        for _ in 0..300 {
            let formed = self.nodes.iter().all(|node| {
                let info = send_command(node.port, &["CLUSTER", "INFO"])
                    .ok()
                    .and_then(|reply| reply.text())
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains(&known)
            });
            if formed {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Redis Cluster did not form within 30 s");
    }

    /// Spawns one node and waits for PING; `None` if it exits or stays silent.
    fn spawn(&self, port: u16, bus: u16) -> Option<Child> {
        let mut process = Command::new(&self.binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", self.binary.display()));
        for _ in 0..POLL_TRIES {
            if !matches!(process.try_wait(), Ok(None)) {
                return None;
            }
            if answers_ping(port) {
                return Some(process);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = process.kill();
        let _ = process.wait();
        None
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn expect_ok(port: u16, args: &[&str]) {
    match send_command(port, args) {
        Ok(Resp::Simple(ok)) if ok == "OK" => {}
        other => panic!("{} {} on {port}: {other:?}", args[0], args[1]),
    }
}

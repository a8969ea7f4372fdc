//! A Garage cluster (a distributed S3 object store) of three nodes on
//! loopback, for the repository's S3 tests: started fresh in a folder,
//! with one key allowed on one bucket, killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key's id and secret (Garage's formats: `GK` and 24 hex digits, 64
/// hex digits).
pub const KEY_ID: &str = "GK535452415441535452415441";
/// The key's secret.
pub const SECRET: &str = "5354524154415f544553545f5345435245545f4b45595f4f465f36345f484558";
/// The bucket.
pub const BUCKET: &str = "strata-tests";

/// A running cluster.
pub struct Garage {
    dir: PathBuf,
    /// Each node's S3 port.
    pub s3: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Garage {
    /// Three fresh nodes in `dir`, joined in one layout (every object on
    /// all three, writes acknowledged by two), the key and the bucket made.
    pub fn start(dir: &Path) -> Garage {
        let s3: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let rpc: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for i in 0..3 {
            let node = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(
                node.join("garage.toml"),
                format!(
                    "metadata_dir = \"{n}/meta\"\ndata_dir = \"{n}/data\"\ndb_engine = \"lmdb\"\n\
                     replication_factor = 3\nconsistency_mode = \"consistent\"\n\
                     rpc_bind_addr = \"127.0.0.1:{r}\"\nrpc_public_addr = \"127.0.0.1:{r}\"\n\
                     rpc_secret = \"{SECRET}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    n = node.display(),
                    r = rpc[i],
                    s = s3[i],
                ),
            )
            .unwrap();
        }
        let mut g = Garage {
            dir: dir.to_path_buf(),
            s3,
            nodes: vec![None, None, None],
        };
        for i in 0..3 {
            g.start_node(i);
        }
        let ids: Vec<String> = (0..3)
            .map(|i| g.cli(i, &["node", "id", "-q"]).trim().to_string())
            .collect();
        for id in &ids[1..] {
            g.cli(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap_or(id);
            g.cli(
                0,
                &[
                    "layout",
                    "assign",
                    "-z",
                    &format!("dc{i}"),
                    "-c",
                    "1G",
                    short,
                ],
            );
        }
        g.cli(0, &["layout", "apply", "--version", "1"]);
        g.cli(
            0,
            &["key", "import", "--yes", "-n", "strata", KEY_ID, SECRET],
        );
        g.cli(0, &["bucket", "create", BUCKET]);
        g.cli(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "strata",
            ],
        );
        g
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}/garage.toml"))
    }

    /// Starts node `i` and waits until it answers.
    pub fn start_node(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("node{i}/server.log"))).unwrap();
        let child = Command::new("garage")
            .arg("-c")
            .arg(self.config(i))
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("garage (scripts/peers builds it)");
        self.nodes[i] = Some(child);
        // `status` needs the node's RPC port (`node id` reads a file).
        let t = Instant::now();
        while !self.try_cli(i, &["status"]).0 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "garage node {i} does not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_cli(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = Command::new("garage")
            .arg("-c")
            .arg(self.config(i))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("garage");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `garage ARGS` on node `i`, which must succeed: its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let (ok, text) = self.try_cli(i, args);
        assert!(ok, "garage {args:?}: {text}");
        text
    }

    /// Node `i`'s S3 URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.s3[i])
    }

    /// The environment a client of node `i` needs.
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "garage".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint(i)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill_node(i);
        }
    }
}

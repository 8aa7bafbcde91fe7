//! A real PostgreSQL for the tests, from Debian's `postgresql` package: `initdb` into a temporary
//! folder (as the `postgres` user when the tests run as root, since initdb refuses root), a free
//! loopback port, `fsync=off` (the tests crash order-servers, not PostgreSQL).
//!
//! Each cluster runs under a small shell watchdog that holds a pipe from the test process: when
//! the test process ends, however it ends, the pipe closes and the watchdog stops PostgreSQL and
//! deletes its folder.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

/// `watchdog BIN PORT...`: initdb, then PostgreSQL on the first of the PORTs it can bind (a
/// port found free can be taken, by any process's outgoing connection, before PostgreSQL binds
/// it), then `ready PORT DIR`.
const WATCHDOG: &str = r#"
set -e
bin=$1
shift
dir=$(mktemp -d /tmp/order-test-pg.XXXXXX)
"$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
started=
for port in "$@"; do
  : >"$dir/postgres.log"
  if "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null; then
    started=$port
    break
  fi
  grep -q "Address already in use" "$dir/postgres.log" || break
done
[ -n "$started" ] || { cat "$dir/postgres.log" >&2; rm -rf "$dir"; exit 1; }
echo "ready $started $dir"
read -r _ || true
"$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
rm -rf "$dir"
"#;

/// A PostgreSQL server of the test process's own.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    dir: String,
    as_postgres: bool,
    /// Its stdin is the pipe that keeps the cluster alive.
    _watchdog: Child,
}

/// The cluster this test process shares between its tests (each test gets its own database).
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(Cluster::start)
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (Debian's postgresql package; `make setup` installs it)")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
    });
    found
        .pop()
        .expect("initdb under /usr/lib/postgresql/*/bin (`make setup` installs postgresql)")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// `n` distinct ports nothing listens on right now.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

impl Cluster {
    /// Starts a new, empty cluster; returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_on_one_of(&free_ports(5))
    }

    /// As [`Self::start`], on the first of `ports` that PostgreSQL can bind.
    pub fn start_on_one_of(ports: &[u16]) -> Self {
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let mut command = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh"]);
            c
        } else {
            Command::new("sh")
        };
        let mut watchdog = command
            .args(["-c", WATCHDOG, "watchdog"])
            .arg(&bin)
            .args(ports.iter().map(u16::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the PostgreSQL watchdog");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read from the watchdog");
        let Some((port, dir)) = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|rest| rest.split_once(' '))
        else {
            let mut error = String::new();
            let _ = watchdog.stderr.take().unwrap().read_to_string(&mut error);
            panic!("PostgreSQL did not start:\n{error}");
        };
        let port = port.parse().expect("the watchdog's port");
        Self {
            port,
            bin,
            dir: dir.to_owned(),
            as_postgres,
            _watchdog: watchdog,
        }
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database of its own.
    pub async fn create_database(&self) -> String {
        use sqlx::Connection;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "orders_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        self.url(&name)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = format!("{}/data", self.dir);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            Command::new(pg_ctl)
        };
        let status = command
            .args(["-D", &data, "-l", &format!("{}/postgres.log", self.dir)])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Stops PostgreSQL (fast shutdown: sessions are ended) and waits until it is down.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts PostgreSQL again after [`Self::stop`], on the same port, and waits until it is up.
    pub fn restart(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port, self.dir
        );
        self.pg_ctl(&["-w", "-o", &options, "start"]);
    }
}

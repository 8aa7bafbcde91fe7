//! The real `order-server` binary as an operator runs it: started with flags, read through its
//! log, stopped with a signal (or killed).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Only a server that never starts reaches this.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `order-server` process on an ephemeral loopback port.
pub struct ServerProcess {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The log lines after the one that gave the address, as they come.
    pub log: mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts `order-server --listen 127.0.0.1:0 ARGS…` and waits for the line with its address.
    pub fn start(args: &[&str]) -> Self {
        match Self::try_start(args) {
            Ok(server) => server,
            Err(log) => panic!("order-server did not start:\n{}", log.join("\n")),
        }
    }

    /// As [`Self::start`], but once the address is read nobody reads the server's stderr again:
    /// the pipe stays open and fills up, as with an operator's stuck log shipper.
    pub fn start_unread(args: &[&str]) -> Self {
        match Self::spawn(args, true) {
            Ok(server) => server,
            Err(log) => panic!("order-server did not start:\n{}", log.join("\n")),
        }
    }

    /// As [`Self::start`], or the log of a server that exited before listening.
    pub fn try_start(args: &[&str]) -> Result<Self, Vec<String>> {
        Self::spawn(args, false)
    }

    /// As [`Self::start`], in a process that may open at most `nofile` file descriptors (soft
    /// and hard limit, through util-linux's `prlimit`, which execs the server: same PID).
    pub fn start_with_fd_limit(nofile: u64, args: &[&str]) -> Self {
        let limit = format!("--nofile={nofile}:{nofile}");
        let mut command = Command::new("prlimit");
        command.args([&limit, "--", env!("CARGO_BIN_EXE_order-server")]);
        match Self::spawn_command(command, args, false) {
            Ok(server) => server,
            Err(log) => panic!("order-server did not start:\n{}", log.join("\n")),
        }
    }

    fn spawn(args: &[&str], stop_reading: bool) -> Result<Self, Vec<String>> {
        let command = Command::new(env!("CARGO_BIN_EXE_order-server"));
        Self::spawn_command(command, args, stop_reading)
    }

    fn spawn_command(
        mut command: Command,
        args: &[&str],
        stop_reading: bool,
    ) -> Result<Self, Vec<String>> {
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("order-server starts");
        let stderr = child.stderr.take().expect("piped");
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let listening = address_in(&line).is_some();
                if lines.send(std::mem::take(&mut line)).is_err() {
                    break;
                }
                if listening && stop_reading {
                    // Hold the pipe open, unread, for as long as the test process lives.
                    loop {
                        std::thread::park();
                    }
                }
            }
        });
        let mut early = Vec::new();
        loop {
            let Ok(mut line) = log.recv_timeout(START_LIMIT) else {
                // The log ended (the process exited) or nothing came in time.
                let _ = child.kill();
                let _ = child.wait();
                return Err(early);
            };
            line.truncate(line.trim_end().len());
            if let Some(addr) = address_in(&line) {
                return Ok(Self { child, addr, log });
            }
            early.push(line);
        }
    }

    /// The log lines from now up to the first one containing `needle`, that one included; or,
    /// as the error, the lines that came before `limit` passed or the log ended without it.
    /// Blocking: call it outside the runtime or from `spawn_blocking`.
    pub fn log_until(&self, needle: &str, limit: Duration) -> Result<Vec<String>, Vec<String>> {
        let deadline = std::time::Instant::now() + limit;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = self.log.recv_timeout(left) else {
                break;
            };
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return Ok(lines);
            }
        }
        Err(lines)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The generated client on a new native gRPC connection to the server.
    pub async fn client(
        &self,
    ) -> order_api::pb::order_management_client::OrderManagementClient<tonic::transport::Channel>
    {
        let channel = tonic::transport::Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        order_api::pb::order_management_client::OrderManagementClient::new(channel)
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an operator stops it; waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().expect("order-server exits")
    }
}

/// The address in the log line that gives it: `address=…` (text) or `"address":"…"` (JSON).
fn address_in(line: &str) -> Option<String> {
    if let Some(addr) = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
    {
        return Some(addr.to_owned());
    }
    let rest = line.split_once("\"address\":\"")?.1;
    Some(rest.split('"').next()?.to_owned())
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

//! The real `quiver` binary as a child process on loopback: started with `quiver serve`, killed
//! with SIGKILL (also when dropped) or stopped with SIGTERM, and restarted on the same data
//! directory and port.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// How to start a node: `quiver serve --cluster-secret <secret> --heartbeat-ms 50 --log warn`,
/// then the test's own flags and environment.
#[derive(Clone, Debug)]
pub struct Launch {
    secret: &'static str,
    /// How long the process may take to listen.
    wait: Duration,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    pub fn new(secret: &'static str, wait: Duration) -> Launch {
        Launch {
            secret,
            wait,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds flags (and their values).
    pub fn args<const N: usize>(mut self, args: [&str; N]) -> Launch {
        self.args.extend(args.map(str::to_string));
        self
    }

    /// `--join <urls>`.
    pub fn join(self, urls: &str) -> Launch {
        self.args(["--join", urls])
    }

    /// `--voter`.
    pub fn voter(self) -> Launch {
        self.args(["--voter"])
    }

    pub fn env(mut self, name: &str, value: impl ToString) -> Launch {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// A node process, killed (SIGKILL) when dropped.
pub struct Proc {
    child: Child,
    port: u16,
    dir: PathBuf,
    launch: Launch,
}

impl Proc {
    /// Starts a node on `dir` and `port` and waits until it listens.
    pub fn spawn(dir: &Path, port: u16, launch: Launch) -> Proc {
        let mut p = Proc {
            child: Self::launch(dir, port, &launch),
            port,
            dir: dir.to_path_buf(),
            launch,
        };
        p.wait_listening();
        p
    }

    fn launch(dir: &Path, port: u16, launch: &Launch) -> Child {
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cluster-secret")
            .arg(launch.secret)
            .arg("--heartbeat-ms")
            .arg("50")
            .arg("--log")
            .arg("warn")
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn quiver")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + self.launch.wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("quiver exited early: {status}");
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "quiver on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `docker stop`: SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid with a plain signal number.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }

    /// Starts it again (after [`Proc::kill9`] or [`Proc::terminate`]) with the same data
    /// directory, port, flags and environment, and waits until it listens.
    pub fn restart(&mut self) {
        self.child = Self::launch(&self.dir, self.port, &self.launch);
        self.wait_listening();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

//! Running commands with deadlines and clear failures, and child processes that are
//! stopped and reaped on drop.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a command run to completion may take unless told otherwise: long enough
/// for any tool the tests run, short enough that a hung tool fails the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stopped child gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Runs a command to completion within [`DEFAULT_TIMEOUT`]; panics with its stderr if
/// it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    run_timeout(program, args, DEFAULT_TIMEOUT)
}

/// Runs a command to completion within `timeout`; panics with its stderr if it fails
/// or takes longer.
pub fn run_timeout(program: &str, args: &[&str], timeout: Duration) -> Output {
    let output = try_run_timeout(program, args, timeout);
    assert!(
        output.status.success(),
        "`{}` failed ({}): {}{}",
        describe(program, args),
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout),
    );
    output
}

/// Runs a command to completion within [`DEFAULT_TIMEOUT`] and returns its output
/// whatever the exit status.
pub fn try_run(program: &str, args: &[&str]) -> Output {
    try_run_timeout(program, args, DEFAULT_TIMEOUT)
}

/// Runs a command to completion and returns its output whatever the exit status;
/// panics if it cannot start or runs longer than `timeout` (it is killed first).
pub fn try_run_timeout(program: &str, args: &[&str], timeout: Duration) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    output_within(command, &describe(program, args), timeout)
}

/// Runs `command` (stdin closed, stdout and stderr collected) within `timeout`;
/// `what` names it in panic messages.
pub fn output_within(mut command: Command, what: &str, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
    // Both pipes are drained by threads so that a chatty command cannot block on a
    // full pipe while we wait for it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "`{what}` did not finish within {timeout:?} (killed); stderr: {}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{what}`: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child process stopped on drop: SIGTERM, a short grace period, then SIGKILL,
/// and always reaped. Its output may go to a log file the guard owns (see
/// [`ChildGuard::with_log`]), read back with [`ChildGuard::log`] and deleted on drop.
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Wraps a spawned child; `what` names it in messages.
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            what: what.into(),
            log: None,
        }
    }

    /// Wraps a spawned child whose stdout and stderr go to `log`, a file the guard
    /// deletes on drop.
    pub fn with_log(child: Child, what: impl Into<String>, log: PathBuf) -> Self {
        Self {
            child: Some(child),
            what: what.into(),
            log: Some(log),
        }
    }

    /// The process id (0 once reaped).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// What the child is, as given when it was wrapped.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The child's output so far, if it was spawned with a log file.
    pub fn log(&self) -> String {
        self.log
            .as_deref()
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The path of the log file, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Sends a signal to the process (nothing once it has been reaped).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.id()).expect("pid fits in i32");
            // SAFETY: kill(2) on the pid of our own unreaped child, which therefore
            // cannot have been reused by another process.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// The exit status if the child has exited (it is then reaped), else `None`.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("waiting for {}: {e}", self.what),
        }
    }

    /// Waits for exit up to `timeout`; panics (after killing it) if it does not exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        assert!(self.child.is_some(), "{} already reaped", self.what);
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; output: {}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the child now: SIGTERM, up to 3 s grace, SIGKILL; always reaps it.
    /// Returns its exit status, `None` if it was already reaped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }

    fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Takes the child out of the guard (the caller reaps it).
    pub fn into_inner(mut self) -> Child {
        self.child.take().expect("child already reaped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
        if let Some(log) = self.log.take() {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` if `timeout`
/// passes first.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

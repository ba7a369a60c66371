//! The daemon as its own process, to be killed and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::daemon::wait_for_socket;

/// A daemon process serving one VM on `socket`.
pub struct DaemonProcess {
    child: Child,
    pub socket: PathBuf,
}

impl DaemonProcess {
    /// Starts the daemon `bin` (in tests: `env!("CARGO_BIN_EXE_accel-daemon")`)
    /// with `args` beside `--socket-path`, and waits for its socket.
    pub fn start(bin: &str, socket: &Path, args: &[&str]) -> DaemonProcess {
        let _ = std::fs::remove_file(socket);
        // Its log goes beside the socket.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(socket.with_extension("log"))
            .expect("the daemon's log file");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        wait_for_socket(socket);
        DaemonProcess {
            child,
            socket: socket.to_owned(),
        }
    }

    /// Waits up to `limit` for the daemon to end by itself (a fault it was
    /// told to inject); false if it still runs.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: nothing of the daemon runs after this.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

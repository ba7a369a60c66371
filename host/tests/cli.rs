//! The `vhost-device-accel` binary: sockets, config file, reconnects and
//! clean shutdown on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_accel_protocol::Config;
use zerocopy::FromBytes;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-device-accel");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vda-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects as a VMM and reads the device configuration.
fn read_config(sock: &Path) -> (u64, Config) {
    let mut f = Frontend::connect(sock, 3).unwrap();
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let proto = f.get_protocol_features().unwrap();
    f.set_protocol_features(proto).unwrap();
    let size = std::mem::size_of::<Config>();
    let (_, bytes) = f
        .get_config(
            0,
            size as u32,
            VhostUserConfigFlags::empty(),
            &vec![0u8; size],
        )
        .unwrap();
    (features, Config::read_from_bytes(&bytes).unwrap())
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serves_reconnects_and_shuts_down_cleanly() {
    let d = tmp("serve");
    let sock = d.join("accel.sock");
    let child = Command::new(BIN)
        .arg("--socket-path")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_socket(&sock);
    let (features, cfg) = read_config(&sock);
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    assert_eq!(cfg.num_capsets.get(), 1);
    assert_eq!(cfg.max_contexts.get(), 64);
    // The first VM has gone: the socket is served again.
    std::thread::sleep(Duration::from_millis(100));
    wait_socket(&sock);
    let (_, cfg) = read_config(&sock);
    assert_eq!(cfg.max_contexts.get(), 64);
    let status = terminate(child);
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn config_file_sets_limits_and_socket_count_serves_each_vm() {
    let d = tmp("config");
    let cfg_path = d.join("accel.toml");
    std::fs::write(
        &cfg_path,
        "workers = 2\n[limits]\nmax_contexts = 7\nmax_bo_size = 1048576\n\
         [sim.faults]\nlatency_us = 10\n",
    )
    .unwrap();
    let prefix = d.join("vm").display().to_string();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg_path)
        .args(["--socket-count", "2", "--socket-prefix", &prefix])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..2 {
        let s = PathBuf::from(format!("{prefix}{i}"));
        wait_socket(&s);
        let (_, cfg) = read_config(&s);
        assert_eq!(cfg.max_contexts.get(), 7);
        assert_eq!(cfg.max_bo_size.get(), 1 << 20);
    }
    assert!(terminate(child).success());
}

#[test]
fn bad_config_file_is_refused_with_a_message() {
    let d = tmp("bad");
    for (text, want) in [
        ("[limits]\nmax_contexts = \"many\"\n", "parsing"),
        ("[limits]\nmax_sg_entries = 99999999\n", "protocol ceiling"),
        ("bogus = 1\n", "unknown field"),
    ] {
        let p = d.join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&p)
            .arg("--socket-path")
            .arg(d.join("x.sock"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

/// A free TCP port on the loopback (a race with other processes is
/// possible but harmless here: the daemon would refuse to start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get_metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn vms_with_weights_and_names_from_config_and_cli_with_metrics() {
    let d = tmp("vms");
    let a = d.join("a.sock");
    let b = d.join("b.sock");
    let cfg_path = d.join("accel.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[[vm]]\nsocket = \"{}\"\nname = \"tenant-a\"\nweight = 3\n",
            a.display()
        ),
    )
    .unwrap();
    let port = free_port();
    /// Kills the daemon if the test fails before it is terminated.
    struct Guard(Option<Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
            }
        }
    }
    let mut child = Guard(Some(
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg_path)
            .arg("--vm")
            .arg(format!("socket={},weight=1,name=tenant-b", b.display()))
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_socket(&a);
    wait_socket(&b);
    read_config(&a);
    read_config(&b);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        match get_metrics(port) {
            Some(t) if t.contains("tenant-b") => break t,
            _ => assert!(Instant::now() < deadline, "no metrics on port {port}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let line = |l: &str| text.lines().any(|x| x == l);
    assert!(line("vaccel_contexts{vm=\"tenant-b\"} 0"), "{text}");
    // The weights as configured, from the file and from the command line.
    assert!(line("vaccel_weight{vm=\"tenant-a\"} 3"), "{text}");
    assert!(line("vaccel_weight{vm=\"tenant-b\"} 1"), "{text}");
    assert!(terminate(child.0.take().unwrap()).success());
    // A weight outside 1..=10000 is refused with a message.
    let out = Command::new(BIN)
        .arg("--vm")
        .arg(format!("socket={},weight=0", d.join("c.sock").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weight must be 1 to 10000"), "{err}");
}

//! `vaccel-qmp`: sends one command to a QEMU monitor (QMP) on a unix socket
//! and prints the answer, for the real-guest test scripts.
//!
//! Usage: `vaccel-qmp SOCKET COMMAND [ARGUMENTS-AS-JSON]`. Exits 0 if QEMU
//! returned, 1 if it answered an error, 2 if it could not be asked.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

/// Reads messages until an answer (events are skipped).
fn answer(r: &mut impl BufRead) -> Result<Value, String> {
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Err("QEMU closed the monitor".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the monitor: {e}")),
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if v.get("return").is_some() || v.get("error").is_some() {
            return Ok(v);
        }
    }
}

fn ask(socket: &str, cmd: &str, args: Option<&str>) -> Result<Value, String> {
    let s = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(|e| format!("greeting: {e}"))?;
    let mut send = |v: Value| writeln!(w, "{v}").map_err(|e| format!("writing: {e}"));
    send(json!({ "execute": "qmp_capabilities" }))?;
    answer(&mut r)?;
    let mut msg = json!({ "execute": cmd });
    if let Some(a) = args {
        let a: Value = serde_json::from_str(a).map_err(|e| format!("arguments: {e}"))?;
        msg["arguments"] = a;
    }
    send(msg)?;
    answer(&mut r)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, cmd, json) = match args.as_slice() {
        [s, c] => (s, c, None),
        [s, c, a] => (s, c, Some(a.as_str())),
        _ => {
            eprintln!("usage: vaccel-qmp SOCKET COMMAND [ARGUMENTS-AS-JSON]");
            return ExitCode::from(2);
        }
    };
    match ask(socket, cmd, json) {
        Ok(v) => {
            println!("{v}");
            if v.get("error").is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vaccel-qmp: {e}");
            ExitCode::from(2)
        }
    }
}

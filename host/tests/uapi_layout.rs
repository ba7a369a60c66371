//! Checks every driver table against the driver's own UAPI header: each
//! ioctl number, struct size, and each named field's offset and width
//! (pointer count fields and the fields of pointed-to structs too), and
//! the numbers of the refused ioctls. A C program compiled against the
//! headers prints them. The values a field may take are not checked here:
//! each table names, beside them, the header's constants they stand for.
//!
//! The headers come from trixie-backports' linux-libc-dev
//! (`host/uapi/fetch-headers.sh`); `VACCEL_UAPI_INCLUDE` names their
//! `usr/include`. Without them the test says so and passes, unless
//! `VACCEL_REQUIRE_UAPI=1` (as in `.ci/run`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use vhost_device_accel::backend::accel::uapi::{Count, Rule, TABLES};

fn include_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VACCEL_UAPI_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/virtio-accel-uapi/usr/include"));
    let found = TABLES.iter().all(|t| dir.join(t.header).exists());
    if !found && std::env::var("VACCEL_REQUIRE_UAPI").as_deref() == Ok("1") {
        panic!(
            "{}: no driver UAPI headers; run host/uapi/fetch-headers.sh",
            dir.display()
        );
    }
    found.then_some(dir)
}

/// What the tables say, as `key value` lines keyed like the C program's.
fn expected() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for t in TABLES {
        for i in t.ioctls {
            m.insert(format!("code {}", i.name), u64::from(i.code));
            m.insert(format!("size {}", i.c_struct), i.size as u64);
            let mut fields: Vec<(&str, usize, usize)> =
                i.fields.iter().map(|f| (f.name, f.off, f.width)).collect();
            for f in i.fields {
                if let Rule::Pointer(p) = f.rule {
                    if let Count::Field { name, off, width } = p.count {
                        fields.push((name, off, width));
                    }
                    if !p.elem_struct.is_empty() {
                        m.insert(format!("size {}", p.elem_struct), p.elem as u64);
                        for e in p.elem_fields {
                            m.insert(format!("off {}.{}", p.elem_struct, e.name), e.off as u64);
                            m.insert(
                                format!("width {}.{}", p.elem_struct, e.name),
                                e.width as u64,
                            );
                        }
                    }
                }
            }
            for (name, off, width) in fields {
                m.insert(format!("off {}.{}", i.c_struct, name), off as u64);
                m.insert(format!("width {}.{}", i.c_struct, name), width as u64);
            }
        }
        for r in t.refused {
            m.insert(format!("code {}", r.name), u64::from(r.code));
        }
    }
    m
}

fn c_program() -> String {
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n");
    for t in TABLES {
        writeln!(c, "#include <{}>", t.header).unwrap();
    }
    c.push_str("int main(void) {\n");
    for (key, _) in expected() {
        let (kind, what) = key.split_once(' ').unwrap();
        let expr = match kind {
            "code" => format!("(unsigned long long){what}"),
            "size" => format!("(unsigned long long)sizeof(struct {what})"),
            "off" => {
                let (s, f) = what.split_once('.').unwrap();
                format!("(unsigned long long)offsetof(struct {s}, {f})")
            }
            "width" => {
                let (s, f) = what.split_once('.').unwrap();
                format!("(unsigned long long)sizeof(((struct {s} *)0)->{f})")
            }
            _ => unreachable!(),
        };
        writeln!(c, "  printf(\"{key} %llu\\n\", {expr});").unwrap();
    }
    c.push_str("  return 0;\n}\n");
    c
}

#[test]
fn tables_match_the_drivers_uapi_headers() {
    let Some(inc) = include_dir() else {
        eprintln!("uapi_layout: skipped: no driver UAPI headers (host/uapi/fetch-headers.sh)");
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uapi_layout");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let bin = dir.join("layout");
    std::fs::write(&src, c_program()).unwrap();
    let out = Command::new("cc")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&inc)
        .arg("-I")
        .arg(inc.join("x86_64-linux-gnu"))
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "compiling against {}: {}",
        inc.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&bin).output().unwrap();
    assert!(run.status.success());
    let got: BTreeMap<String, u64> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let want = expected();
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: table {v}, header {:?}", got.get(k)))
        .collect();
    assert!(
        wrong.is_empty(),
        "tables differ from the headers:\n{}",
        wrong.join("\n")
    );
    eprintln!(
        "uapi_layout: {} values checked against {}",
        want.len(),
        inc.display()
    );
}

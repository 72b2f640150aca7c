//! Link-time layout of the release daemon (docs/benchmarks.md, "Code layout"): linker options about the memory
//! the running program keeps resident, none about what it does.
//!
//! - `--symbol-ordering-file=link/order.txt`: the functions that run at start, at idle and on the message path
//!   (listed by `scripts/link-order`) are placed together at the start of the code. The kernel maps a program's
//!   code 64 KiB around each page touched, so the 6.4 MB of functions run, spread over 47 MB of text, kept about
//!   20 MiB of it resident; gathered, about 7. Names the program no longer has are ignored: a stale list costs
//!   memory, never correctness. The names depend on the build (dependencies, features, toolchain), so the list
//!   is made from `cargo build --release -p mimi-bridge`.
//! - `-z pack-relative-relocs`, only with `MIMI_BRIDGE_PACK_RELOCS=1`: the relative relocations are packed
//!   (DT_RELR), so the 1.5 MB table the dynamic loader reads at every start, and which stays mapped, becomes
//!   about 20 KB. Off by default: the program then needs glibc 2.36 wherever it runs (without, 2.34).
//!
//! Given only to the `mimi-bridge` program of a release build for x86_64 Linux, with no linker configured, and
//! only if a trivial program links with them: the toolchains rustup ships link with their own rust-lld there
//! (since Rust 1.90), which has these options; a toolchain linking with GNU ld (some distributions build rustc
//! so) builds as before.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/order.txt");
    println!("cargo:rerun-if-env-changed=MIMI_BRIDGE_PACK_RELOCS");
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("PROFILE") != "release" || var("TARGET") != "x86_64-unknown-linux-gnu" || !var("RUSTC_LINKER").is_empty() {
        return;
    }
    let order = format!("{}/link/order.txt", var("CARGO_MANIFEST_DIR"));
    let mut args = vec![format!("-Wl,--symbol-ordering-file={order}"), "-Wl,--no-warn-symbol-ordering".to_owned()];
    if var("MIMI_BRIDGE_PACK_RELOCS") == "1" && var("HOST") == var("TARGET") && glibc_at_least(2, 36) {
        args.push("-Wl,-z,pack-relative-relocs".to_owned());
    }
    if !links_with(&args, Path::new(&var("OUT_DIR"))) {
        println!("cargo:warning=the linker does not take a symbol ordering file: the program's code is not laid out");
        return;
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bin=mimi-bridge={arg}");
    }
}

/// Whether a trivial program links with the link arguments `args`, built as cargo builds this package (same
/// compiler, target and flags).
fn links_with(args: &[String], out_dir: &Path) -> bool {
    let source = out_dir.join("link_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let mut cmd = Command::new(rustc);
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    cmd.arg("--target").arg(env::var("TARGET").unwrap_or_default());
    cmd.arg("-o").arg(out_dir.join("link_probe")).arg(&source);
    for arg in args {
        cmd.arg(format!("-Clink-arg={arg}"));
    }
    cmd.output().map(|out| out.status.success()).unwrap_or(false)
}

/// Whether this machine's glibc (`getconf GNU_LIBC_VERSION`, "glibc 2.36") is at least `major.minor`.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut version = text.trim().trim_start_matches("glibc ").split('.').map(|n| n.parse::<u32>());
    match (version.next(), version.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}

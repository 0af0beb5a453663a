//! `cargo xtask vmtest [--kernel 6.1|6.12|all]`: the kernel-WireGuard tests
//! (`tests/tests/kernel_wg.rs`) inside Debian's own 6.1 and 6.12 kernels, booted by
//! QEMU under TCG (the host's `/dev/kvm` cannot run them; see
//! `../shared/NOTES-vmtest.md`).
//!
//! Per kernel, cached under `target/vmtest/cache` (never installed on the host): the
//! kernel package (resolved from Debian's meta package, as the mirror carries only the
//! newest ABI) and busybox-static, `apt-get download`ed and unpacked with `dpkg -x`;
//! the uncompressed `vmlinux` cut out of the bzImage (booted through its PVH entry
//! with qboot: about 5 s to init); the WireGuard, veth and TC modules with their
//! dependencies. A base initramfs (busybox, the host's `dash`, `ip`, `tc`, `wg`,
//! `ping` with their libraries, the modules, `/init`) is built once per kernel; each
//! run appends a second newc archive with the test binary. The guest writes
//! `VMTEST_EXIT=<code>` to its second serial port: no such line is a failure, never a
//! pass. A hung guest is killed at the timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cmd;

/// Modules the guest loads (their dependencies come along).
const MODULES: &[&str] = &["wireguard", "veth", "sch_ingress", "cls_bpf"];
/// Host programs the tests run in the guest.
const PROGRAMS: &[&str] = &[
    "/usr/bin/dash",
    "/usr/bin/wg",
    "/usr/sbin/ip",
    "/usr/sbin/tc",
    "/usr/bin/ping",
];
/// How long one guest may run.
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);

struct Kernel {
    label: &'static str,
    meta: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        label: "6.1",
        meta: "linux-image-amd64",
    },
    Kernel {
        label: "6.12",
        meta: "linux-image-6.12-amd64",
    },
];

fn cache() -> PathBuf {
    cmd::workspace_root().join("target/vmtest/cache")
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The concrete package a meta package depends on.
fn resolve(meta: &str) -> anyhow::Result<String> {
    let text = output("apt-cache", &["depends", meta])?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| format!("{meta} depends on no linux-image package"))
}

/// Downloads and unpacks a package into `cache/<package>/root` once.
fn unpack(package: &str) -> anyhow::Result<PathBuf> {
    let dir = cache().join(package);
    let root = dir.join("root");
    if root.join(".done").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(&dir)?;
    println!("vmtest: downloading {package}");
    let status = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(&dir)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("apt-get download {package} failed");
    }
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("no .deb downloaded")?;
    let _ = std::fs::remove_dir_all(&root);
    cmd::run(
        "dpkg",
        &["-x", deb.to_str().unwrap(), root.to_str().unwrap()],
    )?;
    std::fs::remove_file(&deb)?;
    std::fs::write(root.join(".done"), "")?;
    Ok(root)
}

/// Cuts the compressed payload out of a bzImage and decompresses it to an ELF.
fn vmlinux(bzimage: &Path, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        return Ok(());
    }
    let image = std::fs::read(bzimage)?;
    let find = |magic: &[u8]| image.windows(magic.len()).position(|w| w == magic);
    let decompressed = if let Some(at) = find(&[0x28, 0xb5, 0x2f, 0xfd]) {
        decompress("zstd", &["-dc"], &image[at..])
    } else if let Some(at) = find(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        decompress("xz", &["-dc", "--single-stream"], &image[at..])
    } else {
        bail!("{}: no zstd or xz payload", bzimage.display());
    };
    if !decompressed.starts_with(b"\x7fELF") {
        bail!("{}: the payload is not an ELF vmlinux", bzimage.display());
    }
    std::fs::write(out, decompressed)?;
    Ok(())
}

/// Decompresses `data`; trailing bytes after the stream make the tools complain,
/// so their status is ignored and the output checked instead.
fn decompress(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("decompressor");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("decompressor output");
    let _ = writer.join();
    out.stdout
}

/// Shared libraries a program needs (from `ldd`), including the loader.
fn libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = output("ldd", &[program.to_str().unwrap()])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").nth(1).unwrap_or(l).trim().split(' ').next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A newc cpio archive under construction.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.inode += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
        self.data.extend_from_slice(body);
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        let name = name.trim_matches('/');
        if name.is_empty() || self.dirs.contains(name) {
            return;
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(name.to_owned());
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
        let name = name.trim_start_matches('/');
        if !self.files.insert(name.to_owned()) {
            return;
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(name, 0o100000 | mode, body);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        let name = name.trim_start_matches('/');
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(name, 0o120777, target.as_bytes());
    }

    /// A host file at the same path (with its libraries for programs).
    fn host_program(&mut self, path: &Path) -> anyhow::Result<()> {
        let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.file(path.to_str().unwrap(), 0o755, &body);
        for library in libraries(path)? {
            let body = std::fs::read(&library)?;
            self.file(library.to_str().unwrap(), 0o755, &body);
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// The first line our init prints: the kernel booted as far as userspace.
const INIT_MARKER: &str = "VMTEST_INIT_STARTED";

/// The guest's init: mounts, modules in dependency order, the tests, the verdict.
fn init_script(modules: &[String]) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /modules/{m}\n"))
        .collect();
    format!(
        r#"#!/usr/bin/dash
echo {INIT_MARKER}
export PATH=/bin:/usr/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run/netns
ln -s /run /var/run
{insmods}ip link set lo up
echo "VMTEST_KERNEL=$(uname -r)"
cd /tmp
/tests/kernel_wg --ignored --test-threads=1 --nocapture
echo "VMTEST_EXIT=$?" > /dev/ttyS1
sync
poweroff -f
"#
    )
}

/// Modules (paths under `lib/modules/<kv>`) needed for [`MODULES`], dependencies
/// first, from a `modules.dep` made by busybox depmod.
fn module_closure(root: &Path, kv: &str, busybox: &Path) -> anyhow::Result<Vec<String>> {
    let base = root.join("lib/modules").join(kv);
    let dep = base.join("modules.dep");
    if !dep.exists() {
        // 6.12 ships .ko.xz: busybox handles plain .ko best.
        println!("vmtest: decompressing the {kv} modules (once)");
        for entry in walk(&base) {
            if entry.extension().is_some_and(|e| e == "xz") {
                let status = Command::new("xz").args(["-d", "-f"]).arg(&entry).status()?;
                if !status.success() {
                    bail!("xz -d {} failed", entry.display());
                }
            }
        }
        println!("vmtest: depmod for {kv} (once)");
        cmd::run(
            busybox.to_str().unwrap(),
            &["depmod", "-b", root.to_str().unwrap(), kv],
        )?;
    }
    let text = std::fs::read_to_string(&dep)?;
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            deps.insert(
                module.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            );
        }
    }
    let by_name = |name: &str| {
        deps.keys()
            .find(|path| {
                Path::new(path)
                    .file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| {
                        f == format!("{name}.ko") || f == format!("{}.ko", name.replace('_', "-"))
                    })
            })
            .cloned()
    };
    let mut order = Vec::new();
    fn visit(module: &str, deps: &BTreeMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|m| m == module) {
            return;
        }
        for dep in deps.get(module).into_iter().flatten() {
            visit(dep, deps, order);
        }
        order.push(module.to_owned());
    }
    for name in MODULES {
        match by_name(name) {
            Some(path) => visit(&path, &deps, &mut order),
            None => println!("vmtest: module {name} not found in {kv} (built in?)"),
        }
    }
    Ok(order)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Builds (once) the kernel's vmlinux and base initramfs; returns their paths.
///
/// The unpacked package (400 to 500 MB of modules) is removed once both exist: the
/// kernel release is kept in `release` beside them, so later runs need neither the
/// package nor the disk it takes.
fn prepare(kernel: &Kernel) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let package = resolve(kernel.meta)?;
    let dir = cache().join(&package);
    let image = dir.join("vmlinux");
    // Named by a hash of the init script: a changed init rebuilds the base archive.
    let init_hash = {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        init_script(&[]).hash(&mut hasher);
        hasher.finish()
    };
    let base = dir.join(format!("base-{init_hash:016x}.cpio"));
    let release_file = dir.join("release");
    if image.exists() && base.exists() {
        if let Ok(kv) = std::fs::read_to_string(&release_file) {
            return Ok((image, base, kv.trim().to_owned()));
        }
    }
    let root = unpack(&package)?;
    let busybox = unpack("busybox-static")?.join("bin/busybox");
    let kv = std::fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no modules directory")?;
    vmlinux(&root.join(format!("boot/vmlinuz-{kv}")), &image)?;
    if !base.exists() {
        let modules = module_closure(&root, &kv, &busybox)?;
        let mut cpio = Cpio::default();
        for dir in ["proc", "sys", "dev", "tmp", "run", "var", "sbin", "tests"] {
            cpio.dir(dir);
        }
        let busybox_body = std::fs::read(&busybox)?;
        cpio.file("bin/busybox", 0o755, &busybox_body);
        for applet in [
            "mount", "mkdir", "ln", "cat", "insmod", "poweroff", "sync", "sysctl", "uname", "echo",
            "sleep", "ls", "rm",
        ] {
            cpio.symlink(&format!("bin/{applet}"), "busybox");
        }
        for program in PROGRAMS {
            cpio.host_program(Path::new(program))?;
        }
        cpio.symlink("bin/sh", "/usr/bin/dash");
        let mut names = Vec::new();
        for module in &modules {
            let body = std::fs::read(root.join("lib/modules").join(&kv).join(module))?;
            let name = Path::new(module)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            cpio.file(&format!("modules/{name}"), 0o644, &body);
            names.push(name);
        }
        cpio.file("init", 0o755, init_script(&names).as_bytes());
        std::fs::write(&base, cpio.finish())?;
    }
    std::fs::write(&release_file, &kv)?;
    std::fs::remove_dir_all(&root).with_context(|| format!("removing the unpacked {package}"))?;
    Ok((image, base, kv))
}

/// The test binary, built and stripped, with its libraries as a newc archive.
fn test_archive() -> anyhow::Result<Vec<u8>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--no-run",
            "-p",
            "wgpulse-tests",
            "--test",
            "kernel_wg",
            "--message-format=json",
        ])
        .current_dir(cmd::workspace_root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the kernel tests failed");
    }
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "kernel_wg" && v["profile"]["test"] == true)
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
        .context("no test executable in cargo's output")?;
    let stripped = cache().join("kernel_wg");
    cmd::run(
        "objcopy",
        &[
            "--strip-debug",
            executable.to_str().unwrap(),
            stripped.to_str().unwrap(),
        ],
    )?;
    let mut cpio = Cpio::default();
    cpio.file("tests/kernel_wg", 0o755, &std::fs::read(&stripped)?);
    for library in libraries(&executable)? {
        cpio.file(library.to_str().unwrap(), 0o755, &std::fs::read(&library)?);
    }
    Ok(cpio.finish())
}

/// Boots one kernel with the tests; returns the tests' exit code.
fn boot(kernel: &Kernel, tests: &[u8]) -> anyhow::Result<Boot> {
    let started = Instant::now();
    let (image, base, kv) = prepare(kernel)?;
    let run_dir = cache().join(format!("run-{}", kernel.label));
    std::fs::create_dir_all(&run_dir)?;
    let initrd = run_dir.join("initrd.cpio");
    let mut combined = std::fs::read(&base)?;
    combined.extend_from_slice(tests);
    std::fs::write(&initrd, combined)?;
    let result = run_dir.join("result");
    let _ = std::fs::remove_file(&result);
    println!(
        "vmtest: booting {kv} under QEMU TCG (prepared in {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let mut child = Command::new("timeout")
        .args([
            "--signal=KILL",
            &GUEST_TIMEOUT.as_secs().to_string(),
            "qemu-system-x86_64",
        ])
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "2048",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .args(["-bios", "/usr/share/qemu/qboot.rom"])
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .args(["-serial", "stdio"])
        .arg("-serial")
        .arg(format!("file:{}", result.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask vmtest installs qemu-system-x86)")?;
    let stdout = child.stdout.take().unwrap();
    let mut init_started = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
        init_started |= line.contains(INIT_MARKER);
        println!("  [{}] {}", kernel.label, line.trim_end_matches('\r'));
    }
    let status = child.wait()?;
    // `timeout --signal=KILL` exits 137 when it had to kill QEMU.
    let killed_at_timeout = status.code() == Some(137);
    let verdict = std::fs::read_to_string(&result).unwrap_or_default();
    let code = verdict
        .lines()
        .find_map(|l| l.trim().strip_prefix("VMTEST_EXIT="))
        .and_then(|c| c.trim().parse::<i32>().ok());
    println!(
        "vmtest: {kv}: {} in {:.0} s",
        match code {
            Some(0) => "tests passed".to_owned(),
            Some(code) => format!("tests FAILED (exit {code})"),
            None if killed_at_timeout => format!(
                "NO RESULT: the guest hung and was killed at the {} s timeout",
                GUEST_TIMEOUT.as_secs()
            ),
            None => format!("NO RESULT (qemu {status}; the guest crashed or powered off early)"),
        },
        started.elapsed().as_secs_f64()
    );
    match code {
        Some(code) => Ok(Boot::Result(code)),
        None if !init_started && !killed_at_timeout => Ok(Boot::CrashedBeforeInit),
        None if killed_at_timeout => bail!(
            "the guest hung: killed after {} s without a result",
            GUEST_TIMEOUT.as_secs()
        ),
        None => bail!("the guest reported no result"),
    }
}

/// How one boot ended.
enum Boot {
    /// The tests ran and exited with this code.
    Result(i32),
    /// The kernel died before our init printed its first line: nothing of ours ran.
    CrashedBeforeInit,
}

/// Boots up to this many times when the kernel dies before our init starts (an oops
/// while the kernel patches its own code under multi-threaded TCG was seen about once
/// in twenty boots); a crash or hang once the tests started is never retried.
const BOOT_ATTEMPTS: u32 = 3;

/// Boots `kernel` until the tests ran (see [`BOOT_ATTEMPTS`]); returns their exit code.
fn boot_until_tests_ran(kernel: &Kernel, tests: &[u8]) -> anyhow::Result<i32> {
    for attempt in 1..=BOOT_ATTEMPTS {
        match boot(kernel, tests)? {
            Boot::Result(code) => return Ok(code),
            Boot::CrashedBeforeInit if attempt < BOOT_ATTEMPTS => println!(
                "vmtest: {}: the kernel crashed while booting, before the tests started; booting again ({} of {BOOT_ATTEMPTS})",
                kernel.label,
                attempt + 1
            ),
            Boot::CrashedBeforeInit => {}
        }
    }
    bail!("the kernel crashed while booting {BOOT_ATTEMPTS} times; the tests never ran")
}

/// Runs the kernel tests on `which` (`6.1`, `6.12` or `all`).
pub fn run(which: &str) -> anyhow::Result<()> {
    if cmd::output("qemu-system-x86_64", &["--version"]).is_none() {
        println!("vmtest: installing qemu-system-x86");
        crate::setup::apt_install(&["qemu-system-x86"])?;
    }
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| which == "all" || k.label == which)
        .collect();
    if kernels.is_empty() {
        bail!("unknown kernel {which:?}: 6.1, 6.12 or all");
    }
    std::fs::create_dir_all(cache())?;
    let tests = test_archive()?;
    let mut failed = Vec::new();
    for kernel in kernels {
        match boot_until_tests_ran(kernel, &tests) {
            Ok(0) => {}
            Ok(code) => failed.push(format!("{}: exit {code}", kernel.label)),
            Err(err) => failed.push(format!("{}: {err:#}", kernel.label)),
        }
    }
    if !failed.is_empty() {
        bail!("vmtest failed: {}", failed.join("; "));
    }
    Ok(())
}

//! A real Ceph 16.2 monitor for interop tests (msgr-v1.md section 12).
//!
//! [`CephMon::start`] makes a one-monitor cluster in its own temporary directory on a free
//! loopback port, msgr v1 only ([`CephMon::start_msgr2_only`]: msgr2 only), auth none, and waits until the monitor accepts TCP
//! connections. Dropping it kills the monitor by its pid and removes the directory.
//! [`CephMon::start_cephx`] starts one with cephx instead (cephx.md section 12).
//!
//! When `ceph-mon` is not installed the fixture returns `None` after printing why the
//! test is skipped — unless `ASYNCMSGR_REQUIRE_CEPH=1` (set by `.ci/run`), in which case a
//! missing monitor is a failure.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use protocol::auth::{CryptoKey, KeyEntry, KeyRing};
use protocol::encoding::UTime;
use protocol::types::{AuthEntityName, EntityType};

/// How long a freshly started monitor may take to accept connections (observed: < 1 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which messenger protocol a fixture monitor binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bind {
    /// msgr v1 only (the default fixture).
    Msgr1,
    /// msgr2 only (`ms_bind_msgr1 = false`).
    Msgr2,
}

/// A running single-monitor cluster; stopped and cleaned up on drop.
pub struct CephMon {
    dir: PathBuf,
    addr: SocketAddr,
    fsid: String,
    pid: Option<i32>,
}

/// Whether the interop tests must run (CI) rather than skip when Ceph is missing.
pub fn ceph_required() -> bool {
    std::env::var("ASYNCMSGR_REQUIRE_CEPH").map(|v| v == "1").unwrap_or(false)
}

/// Whether `ceph-mon`, `monmaptool` and `ceph` are on the PATH.
pub fn ceph_installed() -> bool {
    ["ceph-mon", "monmaptool", "ceph"].iter().all(|tool| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Returns `true` when a Ceph-dependent test may run; prints the reason and returns
/// `false` when it is skipped. Panics when Ceph is required (CI) but missing.
pub fn ceph_available(test: &str) -> bool {
    if ceph_installed() {
        return true;
    }
    assert!(
        !ceph_required(),
        "{test}: ceph-mon/ceph-common are not installed but ASYNCMSGR_REQUIRE_CEPH=1 \
         (.ci/run installs them with apt-get)"
    );
    eprintln!(
        "SKIPPED {test}: ceph-mon / ceph-common are not installed \
         (apt-get install -y ceph-mon ceph-common, or run .ci/run)"
    );
    false
}

/// A free loopback TCP port: bind port 0 and release it. Another process could take it
/// before we reuse it; the monitor's start then fails loudly rather than silently.
pub fn free_loopback_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn unique_dir(prefix: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}\n{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// A random RFC 4122 version-4 UUID string, from the OS's randomness.
fn random_uuid() -> io::Result<String> {
    let mut b = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom")?;
    io::Read::read_exact(&mut f, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

impl CephMon {
    /// Starts a monitor, or returns `Ok(None)` when Ceph is not installed and not required
    /// (having printed that `test` is skipped and why).
    pub fn start(test: &str) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr1, None)
    }

    /// As [`CephMon::start`], but the monitor binds msgr2 only (`ms_bind_msgr1 = false`,
    /// msgr-v2.md 12): [`CephMon::addr`] is its v2 address.
    pub fn start_msgr2_only(test: &str) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr2, None)
    }

    /// Starts a monitor with Ceph's default auth: cephx everywhere (cephx.md 12). Its
    /// keyring ([`CephMon::keyring`]) holds `mon.` and `client.admin` (caps `allow *`),
    /// generated by our own `protocol::auth` and read by the monitor; `options` go
    /// into `[global]` (e.g. shortened ticket ttls).
    pub fn start_cephx(test: &str, options: &[(&str, &str)]) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr1, Some(options))
    }

    /// As [`CephMon::start_cephx`], bound to msgr2 only: secure mode becomes possible.
    pub fn start_cephx_msgr2_only(
        test: &str,
        options: &[(&str, &str)],
    ) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr2, Some(options))
    }

    /// `bind`: msgr v1 or msgr2 only; `cephx`: `None` for auth none, or the extra
    /// `[global]` options of a cephx monitor.
    fn start_with_auth(
        test: &str,
        bind: Bind,
        cephx: Option<&[(&str, &str)]>,
    ) -> io::Result<Option<CephMon>> {
        if !ceph_available(test) {
            return Ok(None);
        }
        let dir = unique_dir("asyncmsgr-mon")?;
        let port = free_loopback_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let fsid = random_uuid()?;
        let d = dir.display();
        let auth = match cephx {
            None => "auth_cluster_required = none\nauth_service_required = none\n\
                     auth_client_required = none\n"
                .to_owned(),
            Some(options) => {
                std::fs::write(dir.join("keyring"), cephx_keyring().to_text())?;
                let mut a = format!(
                    "auth_cluster_required = cephx\nauth_service_required = cephx\n\
                     auth_client_required = cephx\nkeyring = {d}/keyring\n"
                );
                for (k, v) in options {
                    a.push_str(&format!("{k} = {v}\n"));
                }
                a
            }
        };
        let (proto, v1, v2) = match bind {
            Bind::Msgr1 => ("v1", true, false),
            Bind::Msgr2 => ("v2", false, true),
        };
        let conf = format!(
            "[global]\nfsid = {fsid}\nmon_host = {proto}:{addr}\n{auth}\
             ms_bind_msgr2 = {v2}\nms_bind_msgr1 = {v1}\n\
             mon_data = {d}/mon.$id\nrun_dir = {d}\nlog_file = {d}/$name.log\n\
             admin_socket = {d}/$name.asok\npid_file = {d}/$name.pid\n\
             [mon.a]\nmon_addr = {proto}:{addr}\n"
        );
        std::fs::write(dir.join("ceph.conf"), conf)?;
        let mut mon = CephMon { dir, addr, fsid, pid: None };
        run(Command::new("monmaptool")
            .args(["--create", "--fsid", &mon.fsid, "--addv", "a"])
            .arg(format!("[{proto}:{addr}]"))
            .arg(mon.dir.join("monmap")))?;
        run(Command::new("ceph-mon")
            .arg("-c")
            .arg(mon.conf())
            .args(["--mkfs", "-i", "a", "--monmap"])
            .arg(mon.dir.join("monmap"))
            .args(if cephx.is_some() {
                vec!["--keyring".to_owned(), mon.keyring().display().to_string()]
            } else {
                vec![]
            }))?;
        mon.launch()?;
        Ok(Some(mon))
    }

    /// Starts the (stopped) monitor again on the same address with the same data.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }

    fn launch(&mut self) -> io::Result<()> {
        let pid_file = self.dir.join("mon.a.pid");
        let _ = std::fs::remove_file(&pid_file);
        run(Command::new("ceph-mon").arg("-c").arg(self.conf()).args(["-i", "a"]))?;
        // ceph-mon daemonizes; wait (bounded) for its pid file and for it to accept.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.pid.is_none() {
                self.pid = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
            }
            // Accepting TCP is not enough: until the monitor has won its (one-member)
            // election it holds client requests such as MAuth, which would make the first
            // exchange of a test wait on the election instead of on us.
            if self.pid.is_some()
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
                && self.is_leader()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("ceph-mon did not accept on {} within {START_TIMEOUT:?}", self.addr),
                ));
            }
            // Polling an external daemon's readiness: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the monitor reports itself leader of its quorum (admin socket `mon_status`).
    fn is_leader(&self) -> bool {
        Command::new("ceph")
            .arg("--admin-daemon")
            .arg(self.admin_socket())
            .arg("mon_status")
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                o.status.success() && text.contains("\"state\": \"leader\"")
            })
            .unwrap_or(false)
    }

    /// Kills the monitor (SIGKILL, as a crash would) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: plain syscall on a pid we started; errors (already gone) are fine.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            // kill(pid, 0) fails with ESRCH once the process has exited (it is not our
            // child: ceph-mon daemonized, so init reaps it).
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// The monitor's address (`127.0.0.1:PORT`): v1, or v2 for a msgr2-only monitor.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The cluster fsid as printed (`xxxxxxxx-xxxx-…`).
    pub fn fsid(&self) -> &str {
        &self.fsid
    }
    /// The cluster's fsid as 16 raw bytes.
    pub fn fsid_bytes(&self) -> [u8; 16] {
        let hex: String = self.fsid.chars().filter(|c| *c != '-').collect();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        out
    }
    /// The temporary directory holding conf, data, logs and the admin socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Path of the cluster's `ceph.conf`.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }
    /// Path of the keyring of a cephx monitor (`mon.` and `client.admin`).
    pub fn keyring(&self) -> PathBuf {
        self.dir.join("keyring")
    }

    /// Sets a `[global]` option in `ceph.conf`; it takes effect at the next
    /// [`CephMon::restart`] (and for every later CLI run).
    pub fn set_global_option(&self, name: &str, value: &str) -> io::Result<()> {
        let conf = std::fs::read_to_string(self.conf())?;
        let conf = conf.replacen("[global]\n", &format!("[global]\n{name} = {value}\n"), 1);
        std::fs::write(self.conf(), conf)
    }

    /// Registers entity `name` (e.g. `osd.0`) with `caps` in the monitor (`ceph auth
    /// get-or-create`) and returns the path of its own keyring file.
    pub fn add_entity(&self, name: &str, caps: &[(&str, &str)]) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("{name}.keyring"));
        let mut args = vec!["auth", "get-or-create", name];
        for (service, cap) in caps {
            args.push(service);
            args.push(cap);
        }
        let path_text = path.display().to_string();
        args.extend(["-o", &path_text]);
        let out = self.ceph(&args)?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ceph auth get-or-create {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(path)
    }

    /// Path of the monitor's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("mon.a.asok")
    }
    /// Runs the `ceph` CLI against this cluster with `args`, bounded by `--connect-timeout`.
    pub fn ceph(&self, args: &[&str]) -> io::Result<Output> {
        Command::new("timeout")
            .arg("60")
            .arg("ceph")
            .arg("-c")
            .arg(self.conf())
            .args(["--connect-timeout", "20"])
            .args(args)
            .output()
    }
    /// `ceph --admin-daemon <asok> <args>`: the monitor's own view (e.g. `perf dump`).
    pub fn admin(&self, args: &[&str]) -> io::Result<String> {
        let out =
            run(Command::new("ceph").arg("--admin-daemon").arg(self.admin_socket()).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for CephMon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh keyring for a cephx test cluster: `mon.` (`allow *`) and `client.admin`
/// (`allow *` on mon, osd, mgr, mds), keys from the OS's randomness.
pub fn cephx_keyring() -> KeyRing {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| UTime::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX), d.subsec_nanos()))
        .unwrap_or_default();
    let mut rng = rand::rngs::OsRng;
    let mut ring = KeyRing::new();
    let mon = KeyEntry::new(CryptoKey::generate(now, &mut rng)).with_cap("mon", "allow *");
    ring.insert(AuthEntityName::new(EntityType::MON, ""), mon);
    let mut admin = KeyEntry::new(CryptoKey::generate(now, &mut rng));
    for service in ["mon", "osd", "mgr", "mds"] {
        admin = admin.with_cap(service, "allow *");
    }
    ring.insert(AuthEntityName::new(EntityType::CLIENT, "admin"), admin);
    ring
}

/// A `ceph.conf` (and its keyring, `ring`) for the real `ceph` CLI to dial a cephx
/// monitor of ours at `addr` over msgr v1, in a fresh temporary directory whose conf
/// path is returned.
pub fn client_conf_cephx_for(addr: SocketAddr, fsid: &str, ring: &KeyRing) -> io::Result<PathBuf> {
    let dir = unique_dir("asyncmsgr-cli")?;
    std::fs::write(dir.join("keyring"), ring.to_text())?;
    let conf = format!(
        "[global]\nfsid = {fsid}\nmon_host = v1:{addr}\n\
         auth_cluster_required = cephx\nauth_service_required = cephx\nauth_client_required = cephx\n\
         ms_bind_msgr2 = false\nms_bind_msgr1 = true\nlog_file = {d}/$name.log\n\
         admin_socket = {d}/$name.asok\nkeyring = {d}/keyring\n",
        d = dir.display()
    );
    let path = dir.join("ceph.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// A `ceph.conf` for the real `ceph` CLI to dial a monitor of ours at `addr` (auth none,
/// msgr v1), written into a fresh temporary directory whose path is returned.
pub fn client_conf_for(addr: SocketAddr, fsid: &str) -> io::Result<PathBuf> {
    let dir = unique_dir("asyncmsgr-cli")?;
    let conf = format!(
        "[global]\nfsid = {fsid}\nmon_host = v1:{addr}\n\
         auth_cluster_required = none\nauth_service_required = none\nauth_client_required = none\n\
         ms_bind_msgr2 = false\nms_bind_msgr1 = true\nlog_file = {d}/$name.log\n\
         admin_socket = {d}/$name.asok\nkeyring = {d}/keyring\n",
        d = dir.display()
    );
    let path = dir.join("ceph.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// The `mon_client` example's binary, built on first use (`cargo build --example
/// mon_client`; `cargo test --workspace` has usually built it already).
pub fn mon_client_example() -> io::Result<PathBuf> {
    // This test binary lives in <target>/<profile>/deps; examples in ../examples.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("test binary has no profile directory"))?;
    let bin = profile_dir.join("examples").join("mon_client");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "-p", "asyncmsgr", "--example", "mon_client"]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    // Always ask cargo: it is a no-op when the binary is fresh, and a stale binary
    // would test old code.
    run(cmd.current_dir(env!("CARGO_MANIFEST_DIR")))?;
    if !bin.exists() {
        return Err(io::Error::other(format!("{} was not built", bin.display())));
    }
    Ok(bin)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn monitor_starts_answers_cli_and_stops() {
        let Some(mon) = CephMon::start("monitor_starts_answers_cli_and_stops").expect("start")
        else {
            return;
        };
        let out = mon.ceph(&["fsid"]).expect("ceph fsid");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), mon.fsid());
        let dir = mon.dir().to_path_buf();
        let addr = mon.addr();
        drop(mon);
        assert!(!dir.exists());
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }
}

//! A real Ceph 16.2 monitor for interop tests (msgr-v1.md section 12).
//!
//! [`CephMon::start`] makes a one-monitor cluster in its own temporary directory on a free
//! loopback port, msgr v1 only ([`CephMon::start_msgr2_only`]: msgr2 only), auth none, and waits until the monitor accepts TCP
//! connections. Dropping it kills the monitor by its pid and removes the directory.
//! [`CephMon::start_cephx`] starts one with cephx instead (cephx.md section 12).
//! [`CephOsd::start`] adds a real `ceph-osd` (memstore, one OSD) beside a cephx monitor
//! (cephx.md section 14); [`CephOsd::start_auth_none`] the same in an auth-none cluster.
//!
//! When `ceph-mon` (or, for [`CephOsd`], `ceph-osd`) is not installed the fixture
//! returns `None` after printing why the test is skipped — unless
//! `ASYNCMSGR_REQUIRE_CEPH=1` (set by `.ci/run`), in which case a missing daemon is a
//! failure.
//!
//! Every `ceph` CLI run goes through [`ceph_cli`], which works around a race in the
//! 16.2 CLI itself (see there).

use std::io;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use protocol::auth::{CryptoKey, KeyEntry, KeyRing};
use protocol::encoding::UTime;
use protocol::types::{AddrType, AuthEntityName, EntityAddr, EntityType};

/// How long a freshly started monitor may take to accept connections (observed: < 1 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a freshly started OSD may take to boot until it is up in the osdmap
/// (observed: 0.25 s idle with [`CephOsd`]'s options, 2.1 s without, cephx.md 14.4;
/// generous for a loaded CI machine).
const OSD_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one admin-socket request may take.
const ADMIN_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest admin-socket answer we read (a `status` is ~300 bytes, a `perf dump` ~100 KB).
const MAX_ADMIN_ANSWER: usize = 16 << 20;

/// How often the CLI is run when it loses the fsid race of [`ceph_cli`]: each run
/// loses it with a few percent chance on a loaded machine, so three in a row point to
/// a real problem, which is then reported.
const CLI_FSID_RACE_ATTEMPTS: usize = 3;

/// Which messenger protocol a fixture monitor binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bind {
    /// msgr v1 only (the default fixture).
    Msgr1,
    /// msgr2 only (`ms_bind_msgr1 = false`).
    Msgr2,
    /// Both, as a default cluster (the OSD fixture's monitor): v2 and v1 on two ports.
    Both,
}

/// How a fixture cluster authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    /// `auth_*_required = none` (the monitor fixture's default).
    None,
    /// Ceph's default, cephx everywhere (cephx.md 12), with a keyring of ours.
    Cephx,
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

/// Whether `tool` is on the PATH.
fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether `ceph-mon`, `monmaptool` and `ceph` are on the PATH.
pub fn ceph_installed() -> bool {
    ["ceph-mon", "monmaptool", "ceph"].iter().all(|tool| on_path(tool))
}

/// As [`ceph_available`], for tests that also need a real OSD (`ceph-osd`).
pub fn ceph_osd_available(test: &str) -> bool {
    if ceph_installed() && on_path("ceph-osd") {
        return true;
    }
    assert!(
        !ceph_required(),
        "{test}: ceph-mon/ceph-osd/ceph-common are not installed but ASYNCMSGR_REQUIRE_CEPH=1 \
         (.ci/run installs them with apt-get)"
    );
    eprintln!(
        "SKIPPED {test}: ceph-mon / ceph-osd / ceph-common are not installed \
         (apt-get install -y ceph-mon ceph-osd ceph-common, or run .ci/run)"
    );
    false
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
///
/// Never the same port twice in one process: the kernel may give a port released a
/// moment ago to the next `bind` to port 0, so two fixtures starting at once (the test
/// binaries run their tests in parallel) could both get it, and a monitor that lost the
/// race to bind it retries (`ms_bind_retry_count`, `ms_bind_retry_delay`) and would take
/// it once the other's is gone — one way a dropped monitor's address can still answer,
/// as `monitor_starts_answers_cli_and_stops` once saw beside the OSD fixture.
pub fn free_loopback_port() -> io::Result<u16> {
    static GIVEN: parking_lot::Mutex<std::collections::BTreeSet<u16>> =
        parking_lot::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if GIVEN.lock().insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::other("64 ports from bind(0) in a row were handed out before"))
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
        CephMon::start_with_auth(test, Bind::Msgr1, Auth::None, &[])
    }

    /// As [`CephMon::start`], but the monitor binds msgr2 only (`ms_bind_msgr1 = false`,
    /// msgr-v2.md 12): [`CephMon::addr`] is its v2 address.
    pub fn start_msgr2_only(test: &str) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr2, Auth::None, &[])
    }

    /// Starts a monitor with Ceph's default auth: cephx everywhere (cephx.md 12). Its
    /// keyring ([`CephMon::keyring`]) holds `mon.` and `client.admin` (caps `allow *`),
    /// generated by our own `protocol::auth` and read by the monitor; `options` go
    /// into `[global]` (e.g. shortened ticket ttls).
    pub fn start_cephx(test: &str, options: &[(&str, &str)]) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr1, Auth::Cephx, options)
    }

    /// As [`CephMon::start_cephx`], bound to msgr2 only: secure mode becomes possible.
    pub fn start_cephx_msgr2_only(
        test: &str,
        options: &[(&str, &str)],
    ) -> io::Result<Option<CephMon>> {
        CephMon::start_with_auth(test, Bind::Msgr2, Auth::Cephx, options)
    }

    /// A monitor with auth none bound to msgr v1 and msgr2 on IPv6 loopback (`[::1]`,
    /// `ms_bind_ipv6 = true`, `ms_bind_ipv4 = false`): [`CephMon::addr`] is its v1
    /// address; its monmap has the msgr2 one.
    pub fn start_ipv6(test: &str) -> io::Result<Option<CephMon>> {
        let ip = std::net::Ipv6Addr::LOCALHOST.into();
        CephMon::start_on(test, ip, None, Bind::Both, Auth::None, &[])
    }

    /// `bind`: msgr v1, msgr2 or both; `auth`: auth none or cephx; `options`: extra
    /// `[global]` options.
    fn start_with_auth(
        test: &str,
        bind: Bind,
        auth: Auth,
        options: &[(&str, &str)],
    ) -> io::Result<Option<CephMon>> {
        CephMon::start_on(test, std::net::Ipv4Addr::LOCALHOST.into(), None, bind, auth, options)
    }

    /// As [`CephMon::start_cephx_msgr2_only`], but the monitor announces `public` (its
    /// monmap address, `mon_host`) while it listens on `bind` (`public_bind_addr`), as a
    /// monitor behind a NAT or a container's port mapping: whatever listens on `public`
    /// (a proxy passing every byte, which secure mode needs) must forward to `bind`
    /// before this is called, since the readiness check (`rados`) dials `public`.
    /// [`CephMon::addr`] is `bind`.
    pub fn start_cephx_msgr2_behind(
        test: &str,
        bind: SocketAddr,
        public: SocketAddr,
        options: &[(&str, &str)],
    ) -> io::Result<Option<CephMon>> {
        CephMon::start_on(
            test,
            bind.ip(),
            Some((bind.port(), public)),
            Bind::Msgr2,
            Auth::Cephx,
            options,
        )
    }

    /// [`CephMon::start_with_auth`] on loopback address `ip` (127.0.0.1 or `[::1]`).
    fn start_on(
        test: &str,
        ip: std::net::IpAddr,
        behind: Option<(u16, SocketAddr)>,
        bind: Bind,
        auth: Auth,
        options: &[(&str, &str)],
    ) -> io::Result<Option<CephMon>> {
        if !ceph_available(test) {
            return Ok(None);
        }
        let dir = unique_dir("asyncmsgr-mon")?;
        let port = match behind {
            Some((port, _)) => port,
            None => free_loopback_port()?,
        };
        let addr = SocketAddr::new(ip, port);
        // What the monitor announces (its monmap address): `addr` unless behind a proxy.
        let announced = behind.map_or(addr, |(_, public)| public);
        let fsid = random_uuid()?;
        let d = dir.display();
        let cephx = auth == Auth::Cephx;
        let mut auth = match auth {
            Auth::None => "auth_cluster_required = none\nauth_service_required = none\n\
                           auth_client_required = none\n"
                .to_owned(),
            Auth::Cephx => {
                std::fs::write(dir.join("keyring"), cephx_keyring().to_text())?;
                format!(
                    "auth_cluster_required = cephx\nauth_service_required = cephx\n\
                     auth_client_required = cephx\nkeyring = {d}/keyring\n"
                )
            }
        };
        for (k, v) in options {
            auth.push_str(&format!("{k} = {v}\n"));
        }
        if ip.is_ipv6() {
            auth.push_str("ms_bind_ipv6 = true\nms_bind_ipv4 = false\n");
        }
        // `addrs`: the monitor's address vector; `mon_addr`: its `[mon.a]` section (a
        // vector there is refused by Ceph, which then uses the monmap's, so none).
        let (addrs, mon_addr, v1, v2) = match bind {
            Bind::Msgr1 => (format!("v1:{addr}"), format!("mon_addr = v1:{addr}\n"), true, false),
            Bind::Msgr2 => {
                let mut section = format!("mon_addr = v2:{announced}\n");
                if behind.is_some() {
                    section.push_str(&format!("public_bind_addr = v2:{addr}\n"));
                }
                (format!("v2:{announced}"), section, false, true)
            }
            Bind::Both => {
                let v2_addr = SocketAddr::new(ip, free_loopback_port()?);
                (format!("[v2:{v2_addr},v1:{addr}]"), String::new(), true, true)
            }
        };
        // mon_data_avail_crit = 0: the throwaway store holds a few MiB, and a monitor
        // refuses to start below 5 % free disk (a shared CI disk can be that full).
        let conf = format!(
            "[global]\nfsid = {fsid}\nmon_host = {addrs}\n{auth}\
             ms_bind_msgr2 = {v2}\nms_bind_msgr1 = {v1}\n\
             mon_data = {d}/mon.$id\nrun_dir = {d}\nlog_file = {d}/$name.log\n\
             mon_data_avail_crit = 0\n\
             admin_socket = {d}/$name.asok\npid_file = {d}/$name.pid\n\
             [mon.a]\n{mon_addr}"
        );
        std::fs::write(dir.join("ceph.conf"), conf)?;
        let mut mon = CephMon { dir, addr, fsid, pid: None };
        let addrs = if addrs.starts_with('[') { addrs } else { format!("[{addrs}]") };
        run(Command::new("monmaptool")
            .args(["--create", "--fsid", &mon.fsid, "--addv", "a", &addrs])
            .arg(mon.dir.join("monmap")))?;
        run(Command::new("ceph-mon")
            .arg("-c")
            .arg(mon.conf())
            .args(["--mkfs", "-i", "a", "--monmap"])
            .arg(mon.dir.join("monmap"))
            .args(if cephx {
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
        let (addr, asok) = (self.addr, self.admin_socket());
        // Accepting TCP is not enough: until the monitor has won its (one-member)
        // election it holds client requests such as MAuth, which would make the first
        // exchange of a test wait on the election instead of on us.
        let ready = || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && is_leader(&asok)
        };
        let mut cmd = Command::new("ceph-mon");
        cmd.arg("-c").arg(self.conf()).args(["-i", "a"]);
        start_daemon(&mut cmd, &pid_file, &mut self.pid, START_TIMEOUT, ready).map_err(|e| {
            io::Error::new(e.kind(), format!("ceph-mon did not accept on {addr}: {e}"))
        })?;
        self.wait_serving()
    }

    /// Waits, bounded, until the monitor serves a real client: `rados lspools`
    /// authenticates (MAuth over v1, the auth frames over v2) and reads the osdmap.
    ///
    /// Leading its quorum is not enough. After mkfs, the auth service has no state until
    /// its first paxos commit, a few milliseconds after the election; until then a 16.2
    /// monitor refuses msgr2 authentication with EBUSY (`handle_auth_request haven't
    /// formed initial quorum`), which a client of ours sees as a failed handshake (v1
    /// MAuth just waits). Ceph's client retries that on its own; a short hunt interval
    /// makes its retries quick, and the run is bounded by `client_mount_timeout`.
    fn wait_serving(&self) -> io::Result<()> {
        run(Command::new("timeout")
            .arg("60")
            .arg("rados")
            .arg("-c")
            .arg(self.conf())
            .args(["--mon_client_hunt_interval", "0.05", "--client_mount_timeout", "30"])
            .arg("lspools"))
        .map(drop)
    }

    /// Kills the monitor (SIGKILL, as a crash would) and waits until it is gone.
    pub fn kill(&mut self) {
        kill_and_wait(&mut self.pid);
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
    /// Runs the `ceph` CLI against this cluster with `args`, bounded by `--connect-timeout`
    /// ([`ceph_cli`]).
    pub fn ceph(&self, args: &[&str]) -> io::Result<Output> {
        ceph_cli(&self.conf(), args)
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

/// A real `ceph-osd` (memstore) beside its own cephx monitor, on loopback (cephx.md 14):
/// a one-OSD cluster, stopped and cleaned up on drop (the OSD first, then the monitor,
/// which removes the directory). [`CephOsd::start_auth_none`] makes the same cluster
/// with auth none.
///
/// The monitor binds msgr v1 and v2 as a default cluster does, and so does the OSD (its
/// public, cluster and two heartbeat messengers, 8 ports, taken by the OSD itself from
/// the first free ones of `ms_bind_port_min..max`, 6800–7300: fixtures started in
/// parallel do not collide). `osd.0`'s key is ours (written by `protocol::auth`, read by
/// the real OSD); its caps are Ceph's for an OSD (`osd new`).
pub struct CephOsd {
    mon: CephMon,
    id: u32,
    pid: Option<i32>,
    v1_addr: SocketAddr,
    v1_nonce: u32,
    v2_addr: Option<SocketAddr>,
}

impl CephOsd {
    /// Starts a cephx monitor and one OSD and waits until the OSD is up in the osdmap;
    /// `Ok(None)` when Ceph is not installed and not required (having printed that
    /// `test` is skipped and why).
    pub fn start(test: &str) -> io::Result<Option<CephOsd>> {
        CephOsd::start_with_auth(test, Auth::Cephx, &[])
    }

    /// As [`CephOsd::start`], with `options` in `[global]` (e.g. shortened ticket ttls,
    /// which the OSD reads too).
    pub fn start_cephx_with(test: &str, options: &[(&str, &str)]) -> io::Result<Option<CephOsd>> {
        CephOsd::start_with_auth(test, Auth::Cephx, options)
    }

    /// As [`CephOsd::start`], but the whole cluster runs auth none
    /// (`auth_cluster_required`, `auth_service_required` and `auth_client_required` =
    /// none, as [`CephMon::start`]): the OSD has no key and no keyring, and
    /// [`CephOsd::keyring`] names no file. A v1 connect without an authorizer is still
    /// refused by it (BADAUTHORIZER, msgr-v1.md 3.6), auth none's authorizer accepted.
    pub fn start_auth_none(test: &str) -> io::Result<Option<CephOsd>> {
        CephOsd::start_with_auth(test, Auth::None, &[])
    }

    fn start_with_auth(
        test: &str,
        auth: Auth,
        options: &[(&str, &str)],
    ) -> io::Result<Option<CephOsd>> {
        if !ceph_osd_available(test) {
            return Ok(None);
        }
        // The OSD's boot waits on two osdmap commits (its device class, then its
        // `up`), each held back by the monitor's `paxos_propose_interval` (1 s) to batch
        // updates: 2 s of its 2.1 s boot. At 0.1 s the OSD is up 0.25 s after launch.
        let mut mon_options = vec![("paxos_propose_interval", "0.1")];
        mon_options.extend_from_slice(options);
        let Some(mon) = CephMon::start_with_auth(test, Bind::Both, auth, &mon_options)? else {
            return Ok(None);
        };
        let d = mon.dir().display().to_string();
        let keyring = match auth {
            Auth::Cephx => format!("keyring = {d}/$name.keyring\n"),
            Auth::None => String::new(),
        };
        // `osd_crush_update_on_start` and `osd_class_update_on_start` off: the OSD skips
        // its boot-time crush create-or-move and set-device-class commands (cephx.md
        // 14.4); no PG maps to it then, and none is needed to authenticate and answer
        // commands.
        let osd_section = format!(
            "[osd]\nosd_objectstore = memstore\nosd_data = {d}/$name\n\
             {keyring}public_addr = 127.0.0.1\ncluster_addr = 127.0.0.1\n\
             osd_crush_update_on_start = false\nosd_class_update_on_start = false\n"
        );
        let mut conf = std::fs::OpenOptions::new().append(true).open(mon.conf())?;
        conf.write_all(osd_section.as_bytes())?;
        drop(conf);

        let mut osd = CephOsd {
            mon,
            id: 0,
            pid: None,
            v1_addr: ([127, 0, 0, 1], 0).into(),
            v1_nonce: 0,
            v2_addr: None,
        };
        let name = AuthEntityName::new(EntityType::OSD, osd.id.to_string());
        let uuid = random_uuid()?;
        let id = osd.id.to_string();
        // `osd new` allocates the id in the osdmap and, with a cephx secret, registers
        // the entity with an OSD's caps in one monitor command; under auth none there is
        // no entity to register.
        let mut osd_new = vec!["osd", "new", &uuid, &id];
        let secrets_path = osd.mon.dir().join("osd-secrets.json").display().to_string();
        if auth == Auth::Cephx {
            let key = CryptoKey::generate(wall_now(), &mut rand::rngs::OsRng);
            let mut ring = KeyRing::new();
            ring.insert(name.clone(), KeyEntry::new(key.clone()));
            std::fs::write(osd.keyring(), ring.to_text())?;
            std::fs::write(
                &secrets_path,
                serde_json::json!({ "cephx_secret": key.to_base64() }).to_string(),
            )?;
            osd_new.extend(["-i", &secrets_path]);
        }
        let out = osd.mon.ceph(&osd_new)?;
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != id {
            return Err(io::Error::other(format!(
                "ceph osd new: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::create_dir_all(osd.mon.dir().join(name.to_string()))?;
        run(Command::new("ceph-osd").arg("-c").arg(osd.mon.conf()).args([
            "-i",
            &id,
            "--mkfs",
            "--osd-uuid",
            &uuid,
        ]))?;
        osd.launch()?;
        Ok(Some(osd))
    }

    /// Runs `ceph-osd` (it daemonizes) and waits, bounded, until it reports itself
    /// `active` on its admin socket — it is then up in an osdmap it received from the
    /// monitor, with its rotating service secrets — and reads its addresses from `osd
    /// dump`.
    fn launch(&mut self) -> io::Result<()> {
        let id = self.id.to_string();
        let pid_file = self.mon.dir().join(format!("osd.{id}.pid"));
        let asok = self.admin_socket();
        let ready = || admin_socket_json(&asok, "status").is_ok_and(|s| s["state"] == "active");
        let mut cmd = Command::new("ceph-osd");
        cmd.arg("-c").arg(self.mon.conf()).args(["-i", &id]);
        start_daemon(&mut cmd, &pid_file, &mut self.pid, OSD_START_TIMEOUT, ready).map_err(
            |e| {
                io::Error::new(
                    e.kind(),
                    format!("osd.{id} was not active: {e} (log: {})", self.log().display()),
                )
            },
        )?;
        let out = self.mon.ceph(&["osd", "dump", "--format", "json"])?;
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            io::Error::other(format!(
                "ceph osd dump: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        let (v1, v1_nonce, v2) = osd_public_addrs(&dump, self.id)?;
        self.v1_addr = v1;
        self.v1_nonce = v1_nonce;
        self.v2_addr = v2;
        Ok(())
    }

    /// Kills the OSD and starts it again (a new incarnation: a new nonce, and the ports
    /// it then finds free), waiting until it is active; its addresses are re-read.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }

    /// Kills the OSD (SIGKILL) and waits until it is gone; the monitor keeps running.
    pub fn kill(&mut self) {
        kill_and_wait(&mut self.pid);
    }

    /// The OSD's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Whether the OSD process is still alive.
    pub fn is_running(&self) -> bool {
        self.pid.is_some_and(is_alive)
    }

    /// The address of `kind` ("v1" or "v2", with its nonce) in the `field` addrvec
    /// (`public_addrs`, `cluster_addrs`, ...) of the first OSD in the monitor's `osd dump`
    /// now; panics when there is none.
    pub fn dumped_addr(&self, field: &str, kind: &str) -> EntityAddr {
        let out = self.mon.ceph(&["osd", "dump", "--format", "json"]).expect("osd dump");
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("osd dump JSON");
        let a = dump["osds"][0][field]["addrvec"]
            .as_array()
            .and_then(|v| v.iter().find(|a| a["type"] == kind))
            .cloned()
            .unwrap_or_default();
        let nonce = a["nonce"].as_u64().and_then(|n| u32::try_from(n).ok()).expect("nonce");
        let addr: SocketAddr = a["addr"].as_str().expect("addr").parse().expect("addr");
        let ty = if kind == "v2" { AddrType::MSGR2 } else { AddrType::LEGACY };
        EntityAddr { ty, nonce, addr: Some(addr) }
    }

    /// The monitor of the cluster (cephx, its keyring holding `client.admin`, or auth
    /// none).
    pub fn mon(&self) -> &CephMon {
        &self.mon
    }
    /// `client.admin` logged in to this cluster's monitor (cephx): a provider holding
    /// the tickets the real monitor issued, and the name (`client.<global id>`) its
    /// messenger goes by.
    pub fn client_admin_provider(
        &self,
    ) -> (protocol::auth::cephx::CephxProvider, protocol::types::EntityName) {
        use protocol::auth::cephx::{CephxClient, CephxProvider, ClientConfig, TicketStore};
        use std::sync::Arc;
        let ring = KeyRing::load(self.mon.keyring()).expect("keyring");
        let name = protocol::auth::parse_entity_name("client.admin").expect("name");
        let key = ring.key(&name).expect("client.admin key").clone();
        let mut auth =
            CephxClient::new(ClientConfig::new(name.clone(), key), Box::new(rand::rngs::OsRng));
        let mon = crate::mon::MonClient::new(self.mon.addr(), Default::default()).expect("msgr");
        mon.authenticate_cephx(&mut auth).expect("client.admin authenticates");
        mon.messenger().shutdown();
        let tickets = Arc::new(TicketStore::default());
        tickets.update_from(&auth, Instant::now());
        let clock =
            protocol::auth::cephx::WallClock::anchored(Instant::now(), crate::cephx::wall_now());
        let rng: protocol::auth::cephx::RngSource = Arc::new(|| Box::new(rand::rngs::OsRng) as _);
        let provider =
            CephxProvider::new(name, protocol::auth::AuthConfig::ceph_defaults(), clock, rng)
                .with_tickets(tickets);
        let me = protocol::types::EntityName::new(EntityType::CLIENT, auth.global_id() as i64);
        (provider, me)
    }
    /// The OSD's id (`osd.N`).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The OSD's public msgr v1 address, as the osdmap has it.
    pub fn v1_addr(&self) -> SocketAddr {
        self.v1_addr
    }
    /// The OSD's public msgr v1 address with its nonce, as the osdmap has it: what a v1
    /// connector dials (it checks that the acceptor is who it dialled, nonce included).
    pub fn v1_entity_addr(&self) -> EntityAddr {
        EntityAddr::legacy(self.v1_addr, self.v1_nonce)
    }
    /// The OSD's public msgr2 address, as the osdmap has it.
    pub fn v2_addr(&self) -> Option<SocketAddr> {
        self.v2_addr
    }
    /// Path of the OSD's own keyring (`osd.N`; none under auth none).
    pub fn keyring(&self) -> PathBuf {
        self.mon.dir().join(format!("osd.{}.keyring", self.id))
    }
    /// Path of the OSD's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.mon.dir().join(format!("osd.{}.asok", self.id))
    }
    /// Path of the OSD's log.
    pub fn log(&self) -> PathBuf {
        self.mon.dir().join(format!("osd.{}.log", self.id))
    }
}

impl Drop for CephOsd {
    fn drop(&mut self) {
        // The monitor (a field) is dropped after this: it kills itself and removes the
        // directory.
        self.kill();
    }
}

/// Runs `cmd`, which starts a Ceph daemon that daemonizes, then waits until its pid
/// file names it (stored in `pid` at once, so a daemon that never gets ready is still
/// killed on drop) and `ready` holds, or fails after `timeout`.
fn start_daemon(
    cmd: &mut Command,
    pid_file: &Path,
    pid: &mut Option<i32>,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> io::Result<()> {
    run(cmd)?;
    let deadline = Instant::now() + timeout;
    loop {
        if pid.is_none() {
            *pid = std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse().ok());
        }
        if pid.is_some() && ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not ready within {timeout:?}"),
            ));
        }
        // Polling an external daemon's readiness: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the monitor behind admin socket `asok` reports itself leader of its quorum
/// (`mon_status`).
fn is_leader(asok: &Path) -> bool {
    admin_socket_json(asok, "mon_status").is_ok_and(|status| status["state"] == "leader")
}

/// The public v1 address (and its nonce) and v2 address of `osd.id` in an `osd dump
/// --format json`, which must show it up.
fn osd_public_addrs(
    dump: &serde_json::Value,
    id: u32,
) -> io::Result<(SocketAddr, u32, Option<SocketAddr>)> {
    let entry = dump["osds"]
        .as_array()
        .and_then(|osds| osds.iter().find(|o| o["osd"] == id))
        .ok_or_else(|| io::Error::other(format!("osd.{id} is not in the osdmap: {dump}")))?;
    if entry["up"] != 1 {
        return Err(io::Error::other(format!("osd.{id} is not up: {entry}")));
    }
    let entry_of = |kind: &str| {
        entry["public_addrs"]["addrvec"]
            .as_array()
            .and_then(|v| v.iter().find(|a| a["type"] == kind))
            .cloned()
    };
    let addr_of = |a: &serde_json::Value| a["addr"].as_str()?.parse::<SocketAddr>().ok();
    let v1 = entry_of("v1")
        .and_then(|a| Some((addr_of(&a)?, u32::try_from(a["nonce"].as_u64()?).ok()?)))
        .ok_or_else(|| io::Error::other(format!("osd.{id} has no public v1 address: {entry}")))?;
    Ok((v1.0, v1.1, entry_of("v2").as_ref().and_then(addr_of)))
}

/// SIGKILLs `pid` (taken) and waits, bounded, until the process is gone.
fn kill_and_wait(pid: &mut Option<i32>) {
    if let Some(pid) = pid.take() {
        // SAFETY: plain syscall on a pid we started; errors (already gone) are fine.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether process `pid` still runs. A daemon is not our child (Ceph daemons
/// daemonize): once dead it stays a zombie until init reaps it, which here took ~1.3 s,
/// per daemon and fixture. It counts as gone once every one of its threads is a zombie
/// or dead: SIGKILL ends the threads one by one, and the main thread can be a zombie
/// while others still hold the process's sockets (seen under load: the monitor's port
/// still accepted). Without `/proc`, it runs until reaped.
fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().any(|task| {
        // `stat` is `tid (comm) STATE …`; comm may hold spaces and parentheses. A thread
        // that vanished meanwhile is dead.
        std::fs::read_to_string(task.path().join("stat")).ok().is_some_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| !matches!(state, 'Z' | 'X'))
        })
    })
}

/// The wall clock as a `utime_t` (keys carry their creation time).
fn wall_now() -> UTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| UTime::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX), d.subsec_nanos()))
        .unwrap_or_default()
}

/// Runs the real `ceph` CLI with conf `conf` and `args`, bounded by `timeout 60` and
/// `--connect-timeout 20`.
///
/// The 16.2 CLI has a race of its own that fails a run now and then on a loaded
/// machine, with `Error EPERM: problem getting command descriptions from mon.`: its
/// librados session starts from a monmap without the fsid (the bootstrap session that
/// fetched the config cached the monitors' addresses, and `MonMap::build_initial` then
/// skips the conf's `fsid`), and it sends its first command as soon as authentication
/// completes — before the monitor's MMonMap (sent in the same burst) is handled — with
/// an all-zero fsid. The monitor refuses it (`handle_command on fsid
/// 00000000-0000-0000-0000-000000000000 != …` in its log, `-EPERM "wrong fsid"`).
/// Reproduced 4 times in 120 runs of the fixture's recipe under load, against a monitor
/// long past its election. The refused command is the table query, sent before the
/// command itself, so the run is repeated (up to three times in all); any other failure
/// is returned as it is.
pub fn ceph_cli(conf: &Path, args: &[&str]) -> io::Result<Output> {
    let mut attempt = 1;
    loop {
        let out = Command::new("timeout")
            .arg("60")
            .arg("ceph")
            .arg("-c")
            .arg(conf)
            .args(["--connect-timeout", "20"])
            .args(args)
            .output()?;
        if attempt == CLI_FSID_RACE_ATTEMPTS || !lost_fsid_race(&out) {
            return Ok(out);
        }
        eprintln!(
            "ceph {args:?}: the CLI lost its fsid race (attempt {attempt}); running it again"
        );
        attempt += 1;
    }
}

/// Whether a CLI run failed with the monitor's refusal of the zero fsid ([`ceph_cli`]).
fn lost_fsid_race(out: &Output) -> bool {
    !out.status.success()
        && String::from_utf8_lossy(&out.stderr)
            .contains("Error EPERM: problem getting command descriptions from mon.")
}

/// One request over a Ceph daemon's admin socket (`ceph --admin-daemon PATH COMMAND`
/// without the Python CLI): `command` (a bare prefix such as `status`, or JSON) and a
/// NUL, answered with a big-endian `u32` length and that many bytes.
pub fn admin_socket_request(path: &Path, command: &str) -> io::Result<Vec<u8>> {
    let request = if command.starts_with('{') {
        command.to_owned()
    } else {
        serde_json::json!({ "prefix": command }).to_string()
    };
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(ADMIN_SOCKET_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_SOCKET_TIMEOUT))?;
    s.write_all(request.as_bytes())?;
    s.write_all(&[0])?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ADMIN_ANSWER {
        return Err(io::Error::other(format!("admin socket answer of {len} bytes")));
    }
    let mut answer = vec![0u8; len];
    s.read_exact(&mut answer)?;
    Ok(answer)
}

/// [`admin_socket_request`] whose answer is JSON.
pub fn admin_socket_json(path: &Path, command: &str) -> io::Result<serde_json::Value> {
    let answer = admin_socket_request(path, command)?;
    serde_json::from_slice(&answer)
        .map_err(|e| io::Error::other(format!("{}: {command}: not JSON ({e})", path.display())))
}

/// A fresh keyring for a cephx test cluster: `mon.` (`allow *`) and `client.admin`
/// (`allow *` on mon, osd, mgr, mds), keys from the OS's randomness.
pub fn cephx_keyring() -> KeyRing {
    let now = wall_now();
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
    client_conf_cephx(
        &format!("v1:{addr}"),
        fsid,
        ring,
        "ms_bind_msgr2 = false\nms_bind_msgr1 = true\n",
    )
}

/// [`client_conf_cephx_for`] over msgr2: `mon_host = v2:ADDR`, and `ms_mon_client_mode`
/// set to `mode` ("secure", "crc", "secure crc", …).
pub fn client_conf_cephx_msgr2_for(
    addr: SocketAddr,
    fsid: &str,
    ring: &KeyRing,
    mode: &str,
) -> io::Result<PathBuf> {
    client_conf_cephx(&format!("v2:{addr}"), fsid, ring, &format!("ms_mon_client_mode = {mode}\n"))
}

fn client_conf_cephx(
    mon_host: &str,
    fsid: &str,
    ring: &KeyRing,
    extra: &str,
) -> io::Result<PathBuf> {
    let dir = unique_dir("asyncmsgr-cli")?;
    std::fs::write(dir.join("keyring"), ring.to_text())?;
    let conf = format!(
        "[global]\nfsid = {fsid}\nmon_host = {mon_host}\n\
         auth_cluster_required = cephx\nauth_service_required = cephx\nauth_client_required = cephx\n\
         {extra}log_file = {d}/$name.log\n\
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
    client_conf(&format!("v1:{addr}"), fsid, "ms_bind_msgr2 = false\nms_bind_msgr1 = true\n")
}

/// [`client_conf_for`] over msgr2: `mon_host = v2:ADDR` and the CLI's own (Pacific)
/// defaults, which prefer msgr2 for every monitor address that offers it.
pub fn client_conf_msgr2_for(addr: SocketAddr, fsid: &str) -> io::Result<PathBuf> {
    client_conf(&format!("v2:{addr}"), fsid, "")
}

fn client_conf(mon_host: &str, fsid: &str, bind: &str) -> io::Result<PathBuf> {
    let dir = unique_dir("asyncmsgr-cli")?;
    let conf = format!(
        "[global]\nfsid = {fsid}\nmon_host = {mon_host}\n\
         auth_cluster_required = none\nauth_service_required = none\nauth_client_required = none\n\
         {bind}log_file = {d}/$name.log\n\
         admin_socket = {d}/$name.asok\nkeyring = {d}/keyring\n",
        d = dir.display()
    );
    let path = dir.join("ceph.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// The `mon_client` example's binary, built on first use (`cargo build --example
/// mon_client`; `cargo test --workspace` has usually built it already). Built with the
/// workspace's features, as `cargo test --workspace` builds it: `-p asyncmsgr` alone
/// leaves out the `fault-injection` the tests crate turns on, so in CI it compiled a
/// second asyncmsgr and the example inside a test (about 50 s on 2 cores, beside that
/// binary's other tests).
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
    cmd.args(["build", "--quiet", "--workspace", "--example", "mon_client"]);
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

/// Runs `mon_client --keyring KEYRING MON --watch` until its stderr reported `renewals`
/// auth ticket renewals or `within` passed, then stops it. Returns the renewals seen,
/// its stderr lines and its stdout (the monmap it printed first).
pub fn watch_mon_client(
    keyring: &Path,
    mon: &str,
    renewals: usize,
    within: std::time::Duration,
) -> (usize, Vec<String>, String) {
    use std::io::BufRead;
    let bin = mon_client_example().expect("mon_client example");
    let mut child = Command::new(bin)
        .arg("--keyring")
        .arg(keyring)
        .args([mon, "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mon_client");
    let (tx, lines) = crossbeam_channel::unbounded();
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + within;
    let (mut seen, mut renewed) = (Vec::new(), 0);
    while renewed < renewals {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else { break };
        renewed += usize::from(line.contains("auth ticket renewed"));
        seen.push(line);
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let _ = reader.join();
    (renewed, seen, String::from_utf8_lossy(&out.stdout).into_owned())
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

    /// The OSD fixture: osd.0 is up with a v1 and a v2 public address; its v1 address
    /// speaks msgr v1; the real CLI's `ceph tell osd.0 version` (straight to the OSD,
    /// cephx) answers; dropping it kills the OSD and the monitor and removes the
    /// directory.
    #[test]
    fn osd_starts_answers_tell_and_stops() {
        let Some(osd) = CephOsd::start("osd_starts_answers_tell_and_stops").expect("start") else {
            return;
        };
        let v1 = osd.v1_addr();
        assert_ne!(Some(v1), osd.v2_addr());
        assert!(osd.v2_addr().is_some(), "the OSD binds msgr2 too");
        let mut banner = [0u8; 9];
        let mut s = TcpStream::connect(v1).expect("dial the OSD's v1 address");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.read_exact(&mut banner).expect("banner");
        assert_eq!(&banner, b"ceph v027");
        drop(s);

        let out = osd.mon().ceph(&["tell", "osd.0", "version"]).expect("ceph tell");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let version: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(version["release"], "pacific", "{version}");

        let dir = osd.mon().dir().to_path_buf();
        let pid = osd.pid().expect("running");
        assert!(osd.is_running());
        drop(osd);
        assert!(!dir.exists());
        assert!(!is_alive(pid), "osd pid {pid} is gone");
    }
}

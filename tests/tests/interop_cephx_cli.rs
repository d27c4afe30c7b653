//! The real `ceph` CLI (Ceph 16.2.15) authenticating with cephx to our messenger playing
//! a minimal monitor (issue 14, must-show 3): MiniMon answers MAuth through
//! `protocol::auth::cephx::KeyServer` and serves nothing to an unauthenticated session.
//!
//! Skipped with a printed reason when Ceph is not installed (a failure in CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::auth::cephx::{RequestType, ServiceMask};
use protocol::auth::KeyRing;
use protocol::messages::AnyMessage;
use protocol::types::{EntityType, AUTH_CEPHX, AUTH_UNKNOWN};
use serde_json::json;
use tests::ceph::{ceph_available, cephx_keyring, client_conf_cephx_for};
use tests::loopback::init_logging;
use tests::mon::*;

const FSID: [u8; 16] = [
    0x3c, 0x1d, 0x7e, 0x52, 0x90, 0xab, 0x4c, 0x1e, 0x8f, 0x21, 0x5a, 0x6b, 0x7c, 0x8d, 0x9e, 0x0f,
];

fn status_json() -> serde_json::Value {
    json!({
        "fsid": fsid_string(&FSID),
        "health": {"status": "HEALTH_OK", "checks": {}, "mutes": []},
        "served_by": "asyncmsgr with cephx",
    })
}

/// `get_command_descriptions` with the one command this test runs (the shape of a
/// 16.2.15 monitor's entry) and `status`.
fn handler() -> CommandHandler {
    Box::new(|cmd: &serde_json::Value| {
        let out = |v: serde_json::Value| Bytes::from(v.to_string());
        match cmd["prefix"].as_str() {
            Some("get_command_descriptions") => (
                0,
                String::new(),
                out(json!({"cmd073": {"sig": ["status"], "help": "show cluster status",
                                      "module": "mon", "perm": "r", "flags": 0}})),
            ),
            Some("status") => (0, String::new(), out(status_json())),
            _ => (-22, "unrecognized command".into(), Bytes::new()),
        }
    })
}

/// The CLI's conf directory, removed when the test ends.
struct ConfDir(PathBuf);

impl Drop for ConfDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn run_ceph(conf: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg("ceph")
        .arg("-c")
        .arg(conf)
        .args(["--connect-timeout", "10"])
        .args(args)
        .output()
        .expect("run ceph")
}

/// `ceph -s -f json` with cephx against our monitor: the CLI negotiates cephx, proves
/// its key (GET_AUTH_SESSION_KEY, CephXAuthenticate v3), asks for its service tickets
/// (GET_PRINCIPAL_SESSION_KEY, as a Pacific client does over v1, cephx.md 4.3), then
/// runs `status` as `client.<global id>` and prints our JSON.
#[test]
fn ceph_cli_authenticates_with_cephx_to_our_monitor() {
    init_logging();
    if !ceph_available("ceph_cli_cephx") {
        return;
    }
    let ring = cephx_keyring();
    let (msgr, addr, rx) = MiniMon::serve_cephx(FSID, handler(), ring.clone()).expect("serve");
    let conf = ConfDir(client_conf_cephx_for(addr, &fsid_string(&FSID), &ring).expect("conf"));
    let out = run_ceph(&conf.0, &["-s", "-f", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let seen: Vec<Received> = rx.try_iter().collect();
    assert!(out.status.success(), "ceph -s failed: {:?}\n{stdout}\n{stderr}", out.status);
    let printed: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("CLI output is not JSON ({e}): {stdout}"));
    assert_eq!(printed, status_json());

    // What the CLI sent: negotiation offering cephx, then cephx requests.
    let auths: Vec<_> = seen
        .iter()
        .filter_map(|r| match &r.msg {
            AnyMessage::Auth(a) => Some(a),
            _ => None,
        })
        .collect();
    let negotiation = auths
        .iter()
        .find(|a| a.protocol == AUTH_UNKNOWN)
        .and_then(|a| a.negotiation())
        .expect("negotiation")
        .expect("decodes");
    assert_eq!(negotiation.methods, [AUTH_CEPHX]);
    let kinds: Vec<u16> = auths
        .iter()
        .filter(|a| a.protocol == AUTH_CEPHX)
        .map(|a| u16::from_le_bytes([a.auth_payload[0], a.auth_payload[1]]))
        .collect();
    assert!(kinds.contains(&RequestType::GET_AUTH_SESSION_KEY.0), "{kinds:x?}");
    assert!(kinds.contains(&RequestType::GET_PRINCIPAL_SESSION_KEY.0), "{kinds:x?}");
    let principal = auths
        .iter()
        .find(|a| a.auth_payload.starts_with(&[0x00, 0x02]))
        .expect("principal request");
    let keys = &principal.auth_payload[principal.auth_payload.len() - 4..];
    assert_eq!(u32::from_le_bytes(keys.try_into().expect("4 bytes")), ServiceMask(0x15).0);
    // The status command came from the authenticated client.<global id>.
    let src = seen
        .iter()
        .find(|r| matches!(&r.msg, AnyMessage::MonCommand(c) if c.cmd[0].contains("status")))
        .and_then(|r| r.src)
        .expect("status command");
    assert_eq!(src.ty, EntityType::CLIENT);
    assert!(src.num >= MiniMon::FIRST_GLOBAL_ID as i64, "{src}");
    msgr.shutdown();
}

/// A CLI whose keyring holds another key is refused (-EACCES) and gets nothing: it
/// exits non-zero and no command of it was answered.
#[test]
fn ceph_cli_with_a_wrong_key_is_refused_by_our_monitor() {
    init_logging();
    if !ceph_available("ceph_cli_cephx_wrong_key") {
        return;
    }
    let ring = cephx_keyring();
    let (msgr, addr, rx) = MiniMon::serve_cephx(FSID, handler(), ring).expect("serve");
    let other: KeyRing = cephx_keyring();
    let conf = ConfDir(client_conf_cephx_for(addr, &fsid_string(&FSID), &other).expect("conf"));
    let start = Instant::now();
    let out = run_ceph(&conf.0, &["-s", "-f", "json"]);
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wrong key accepted: {stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let seen: Vec<Received> = rx.try_iter().collect();
    assert!(seen.iter().any(|r| matches!(r.msg, AnyMessage::Auth(_))), "it tried");
    assert!(
        !seen.iter().any(|r| matches!(r.msg, AnyMessage::MonCommand(_))),
        "no command may pass without authentication"
    );
    eprintln!("refused in {took:?}: {}", stderr.trim());
    msgr.shutdown();
}

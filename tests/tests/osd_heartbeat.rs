//! The OSD heartbeat, as Ceph's docs describe it, on asyncmsgr: every OSD has front and
//! back heartbeat messengers (server side `stateless_server`, client side
//! `lossy_client`), all sharing one small worker pool; each pings every peer on both
//! networks with `MOSDPing` and the peer answers `PING_REPLY` on the connection the ping
//! came on. A peer that stops answering for longer than the grace is reported failed —
//! and only that peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_center::{WorkerPool, WorkerPoolConfig};
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use parking_lot::Mutex;
use protocol::auth::{AuthConfig, AuthProvider, ConMode, ConModes};
use protocol::encoding::UTime;
use protocol::messages::{MOSDPing, OsdPingOp, TypedMessage};
use protocol::types::{EntityAddr, EntityName, EntityType, Features};
use protocol::Message;
use tests::cephx::TestCluster;
use tests::loopback::{addr_for, test_config, Seen, WAIT};

const FSID: [u8; 16] = [7; 16];
const IFACES: [&str; 2] = ["front", "back"];

/// Answers a PING with a PING_REPLY on the same connection (the OSD's heartbeat server).
struct HeartbeatServer {
    osd: i64,
}

impl Dispatcher<Connection> for HeartbeatServer {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.ms_fast_dispatch(conn, msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MOSDPing::TYPE.0
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        let Ok(ping) = MOSDPing::from_message(&msg) else { return };
        if ping.op != OsdPingOp::PING {
            return;
        }
        let reply = MOSDPing { op: OsdPingOp::PING_REPLY, up_from: self.osd as u32, ..ping };
        let _ = conn.send_message(reply.to_message(conn.features()));
    }
}

/// Records when each peer last answered, per interface (the OSD's heartbeat client).
struct HeartbeatClient {
    iface: usize,
    last_reply: Arc<Mutex<HashMap<(i64, usize), Instant>>>,
}

impl Dispatcher<Connection> for HeartbeatClient {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.ms_fast_dispatch(conn, msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MOSDPing::TYPE.0
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, msg: Message) {
        if let Ok(reply) = MOSDPing::from_message(&msg) {
            // The replier is whom the message's source names, as Ceph's
            // `handle_osd_ping` takes `m->get_source().num()`.
            if let (OsdPingOp::PING_REPLY, Some(from)) = (reply.op, msg.src()) {
                self.last_reply.lock().insert((from.num, self.iface), Instant::now());
            }
        }
    }
}

struct Osd {
    id: i64,
    servers: Vec<Messenger>,
    clients: Vec<Messenger>,
    addrs: Vec<EntityAddr>,
    last_reply: Arc<Mutex<HashMap<(i64, usize), Instant>>>,
}

/// osd.`id`'s four heartbeat messengers, each with the config `config` makes.
fn start_osd(id: i64, pool: &Arc<WorkerPool>, config: &dyn Fn() -> MessengerConfig) -> Osd {
    let last_reply = Arc::new(Mutex::new(HashMap::new()));
    let (mut servers, mut clients, mut addrs) = (Vec::new(), Vec::new(), Vec::new());
    for (iface, _) in IFACES.iter().enumerate() {
        let nonce = (id as u32) * 10 + iface as u32 + 1;
        let name = EntityName::new(EntityType::OSD, id);
        let server =
            Messenger::with_pool(name, nonce, config(), pool.clone()).expect("server messenger");
        server.set_default_policy(Policy::stateless_server());
        server.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        server.start().expect("start");
        server.add_dispatcher_head(Arc::new(HeartbeatServer { osd: id })).expect("dispatcher");
        addrs.push(server.my_addr());
        servers.push(server);
        let client = Messenger::with_pool(name, nonce + 100, config(), pool.clone())
            .expect("client messenger");
        client.set_default_policy(Policy::lossy_client());
        client.start().expect("start");
        let hb = HeartbeatClient { iface, last_reply: last_reply.clone() };
        client.add_dispatcher_head(Arc::new(hb)).expect("dispatcher");
        clients.push(client);
    }
    Osd { id, servers, clients, addrs, last_reply }
}

/// One heartbeat round: every live OSD pings every other on both interfaces.
fn ping_all(osds: &[Osd], targets: &[(i64, Vec<EntityAddr>)]) {
    let wall = UTime { sec: 1, nsec: 0 };
    for osd in osds {
        for (peer, addrs) in targets {
            if *peer == osd.id {
                continue;
            }
            for (iface, client) in osd.clients.iter().enumerate() {
                let conn = client.connect_to(EntityType::OSD, addrs[iface]);
                let ping = MOSDPing {
                    fsid: FSID,
                    op: OsdPingOp::PING,
                    ping_stamp: wall,
                    up_from: osd.id as u32,
                    ..MOSDPing::default()
                };
                let _ = conn.send_message(ping.to_message(Features::PACIFIC_ADVERTISED));
            }
        }
    }
}

/// Peers (and interfaces) of `osd` without a reply within `grace`.
fn failed(osd: &Osd, peers: &[i64], grace: Duration) -> Vec<(i64, usize)> {
    let last = osd.last_reply.lock();
    let now = Instant::now();
    let mut out = Vec::new();
    for &peer in peers.iter().filter(|&&p| p != osd.id) {
        for iface in 0..IFACES.len() {
            let fresh = last.get(&(peer, iface)).is_some_and(|t| now.duration_since(*t) < grace);
            if !fresh {
                out.push((peer, iface));
            }
        }
    }
    out
}

#[test]
fn heartbeats_on_front_and_back_detect_exactly_the_dead_osd() {
    heartbeat_scenario(ProtocolVersion::V1, None, &|_| test_config(3), &|_| {});
}

// The same with every heartbeat connection dialled at the peers' `v2:` addresses.
#[test]
fn heartbeats_on_front_and_back_detect_exactly_the_dead_osd_over_msgr2() {
    heartbeat_scenario(ProtocolVersion::V2, None, &|_| test_config(3), &|_| {});
}

// The same with cephx between the OSDs (issue 14 must-show 4): every heartbeat
// connection presents an authorizer from its osd ticket, the peer verifies it with the
// osd rotating secrets (challenge round), and every ping and reply is signed
// (`cephx_require_signatures`: a session without MSG_AUTH is refused).
#[test]
fn heartbeats_with_cephx_and_signing() {
    heartbeats_with_cephx(ProtocolVersion::V1, None);
}

// The same over msgr2 in secure mode (`ms_cluster_mode = secure`): every heartbeat
// connection authenticates with cephx in msgr2's AUTH frames and runs AES-128-GCM; an
// auth-none peer dialling the `v2:` address is refused.
#[test]
fn heartbeats_with_cephx_in_secure_mode_over_msgr2() {
    heartbeats_with_cephx(ProtocolVersion::V2, Some(ConMode::SECURE));
}

/// Three OSDs with cephx keys from one in-process key server heartbeat over `proto`;
/// over msgr2 the cluster mode is `mode` alone.
fn heartbeats_with_cephx(proto: ProtocolVersion, mode: Option<ConMode>) {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let names: Vec<EntityName> = (0..3).map(|i| EntityName::new(EntityType::OSD, i)).collect();
    let mut cluster = TestCluster::new(&names, seed);
    let mut auth = AuthConfig::ceph_defaults();
    auth.cephx_require_signatures = true;
    let providers: Vec<Arc<dyn AuthProvider>> =
        names.iter().map(|&n| cluster.provider(n, Some(auth.clone())) as _).collect();
    let config = |id: i64| {
        let p = usize::try_from(id).ok().and_then(|i| providers.get(i)).expect("provider");
        let cluster_mode = mode.map(|m| ConModes(vec![m]));
        MessengerConfig { cluster_mode, ..test_config(3) }.with_auth_provider(p.clone())
    };
    heartbeat_scenario(proto, mode, &config, &|addr| refuses_auth_none(addr_for(proto, addr)));
}

/// The heartbeat server at `addr` requires cephx: a peer without an authorizer is
/// refused at the handshake.
fn refuses_auth_none(addr: EntityAddr) {
    let (anon, rx) = tests::loopback::client(EntityType::OSD, 77, Policy::lossy_client());
    let conn = anon.connect_to(EntityType::OSD, addr);
    let _ = conn.send_message(MOSDPing::default().to_message(Features::PACIFIC_ADVERTISED));
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Refused(_)) => break,
            Ok(Seen::Message(..) | Seen::Connect(_)) => panic!("an auth-none peer got in"),
            Ok(_) => {}
            Err(e) => panic!("the auth-none peer was not refused within {WAIT:?}: {e}"),
        }
    }
    anon.shutdown();
}

/// Three OSDs heartbeat on front and back until all hear each other, stay so, then
/// osd.2 dies and exactly it is reported, by both survivors on both networks. Peers
/// dial each other over `proto`; each OSD's messengers get `config(id)`; `check` runs
/// on osd.0's front address before the survivors shut down. `mode`: the connection
/// mode every msgr2 heartbeat session must run in.
fn heartbeat_scenario(
    proto: ProtocolVersion,
    mode: Option<ConMode>,
    config: &dyn Fn(i64) -> MessengerConfig,
    check: &dyn Fn(EntityAddr),
) {
    // Three OSDs × four heartbeat messengers on three workers, as an OSD shares its pool.
    let pool = Arc::new(
        WorkerPool::new(WorkerPoolConfig { workers: 3, ..Default::default() }).expect("pool"),
    );
    let mut osds: Vec<Osd> = (0..3).map(|i| start_osd(i, &pool, &|| config(i))).collect();
    let targets: Vec<(i64, Vec<EntityAddr>)> = osds
        .iter()
        .map(|o| (o.id, o.addrs.iter().map(|&a| addr_for(proto, a)).collect()))
        .collect();
    let ids: Vec<i64> = osds.iter().map(|o| o.id).collect();
    let interval = Duration::from_millis(20);
    // Detection grace, and the far longer silence after which a *live* peer would count
    // as wrongly reported: a loaded CI machine can stall a heartbeat for a moment.
    let grace = Duration::from_secs(1);
    let false_alarm = Duration::from_secs(4);
    let ticker = crossbeam_channel::tick(interval);

    // Healthy: everyone hears everyone on both networks.
    let deadline = Instant::now() + WAIT;
    loop {
        ping_all(&osds, &targets);
        if osds.iter().all(|o| failed(o, &ids, grace).is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "heartbeats never all answered");
        let _ = ticker.recv_timeout(WAIT);
    }
    for (iface, client) in osds[0].clients.iter().enumerate() {
        let conn = client.connect_to(EntityType::OSD, targets[1].1[iface]);
        assert_eq!(conn.protocol(), Some(proto), "{} heartbeat", IFACES[iface]);
        if let Some(mode) = mode {
            assert_eq!(conn.con_mode(), Some(mode), "{} heartbeat's mode", IFACES[iface]);
        }
    }
    // And it stays so for a while: no false failure.
    for _ in 0..25 {
        let _ = ticker.recv_timeout(WAIT);
        ping_all(&osds, &targets);
        for o in &osds {
            assert!(failed(o, &ids, false_alarm).is_empty(), "osd.{} saw a false failure", o.id);
        }
    }

    // osd.2 dies (all its messengers go away).
    let dead = osds.pop().expect("osd.2");
    for m in dead.servers.iter().chain(dead.clients.iter()) {
        m.shutdown();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = ticker.recv_timeout(WAIT);
        ping_all(&osds, &targets);
        let reports: Vec<Vec<(i64, usize)>> = osds.iter().map(|o| failed(o, &ids, grace)).collect();
        for o in &osds {
            let blamed = failed(o, &ids, false_alarm);
            assert!(
                blamed.iter().all(|(peer, _)| *peer == dead.id),
                "osd.{} blamed {blamed:?}",
                o.id
            );
        }
        if reports.iter().all(|r| r.len() == IFACES.len()) {
            break; // both survivors report osd.2 down on front and back
        }
        assert!(Instant::now() < deadline, "the dead OSD was never reported");
    }
    check(osds[0].addrs[0]);
    for o in &osds {
        for m in o.servers.iter().chain(o.clients.iter()) {
            m.shutdown();
        }
    }
    pool.shutdown();
}

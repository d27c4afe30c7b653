//! Feature bits per policy, per peer type (Ceph's `Messenger::Policy::features_supported`
//! and `features_required`): an acceptor checks a peer against its policy for the type
//! the peer names (v1 CONNECT's `host_type`, msgr2 HELLO's entity type) and refuses it
//! with v1's FEATURES reply or msgr2's IDENT_MISSING_FEATURES; a connector checks the
//! acceptor against its policy for the type it dialled; the negotiated features are the
//! intersection of the two policies' supported bits. Over msgr v1 and msgr2.

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType, Features};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Every feature we speak.
const ALL: Features = Features::PACIFIC_ADVERTISED;

/// All but `bit`: an older peer's supported set.
fn all_but(bit: Features) -> Features {
    ALL & !bit
}

/// Waits for the client's connection `conn` to be refused (`ms_handle_refused`), with no
/// `ms_handle_connect` before it.
fn expect_refused(rx: &Receiver<Seen>, conn: &Connection, why: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Refused(c)) if &c == conn => return,
            Ok(Seen::Connect(c)) if &c == conn => panic!("{why}: the connection opened"),
            Ok(_) => {}
            Err(e) => panic!("{why}: not refused within {WAIT:?} ({e})"),
        }
    }
}

/// Sends a message on `conn` and waits for the server to receive it; returns the
/// server's connection it came on, after the client heard `ms_handle_connect`.
fn expect_open(
    conn: &Connection,
    client_rx: &Receiver<Seen>,
    server_rx: &Receiver<Seen>,
    why: &str,
) -> Connection {
    conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"x"))).expect("send");
    assert!(
        wait_for_event(client_rx, |s| matches!(s, Seen::Connect(c) if c == conn)),
        "{why}: the client never opened"
    );
    let (theirs, m) = next_message(server_rx);
    assert_eq!(m.tid(), 1, "{why}");
    theirs
}

fn server_addr(proto: ProtocolVersion, m: &Messenger) -> EntityAddr {
    addr_for(proto, m.my_addr())
}

/// An OSD that requires SERVER_PACIFIC of its OSD peers but not of its clients refuses
/// an OSD-typed peer that lacks the bit and accepts a client-typed one of the same
/// configuration and policy; the client-typed connection negotiates the intersection of
/// the client's supported bits and the OSD's policy for clients.
fn per_type_required_on_accept(proto: ProtocolVersion) {
    // The server supports all but OSD_FIXED_COLLECTION_LIST towards clients, all towards
    // OSDs, and requires SERVER_PACIFIC of OSDs only.
    let for_clients = Policy::stateless_server()
        .with_features(all_but(Features::OSD_FIXED_COLLECTION_LIST), Features::REQUIRED_DEFAULT);
    let (srv, _, srv_rx) = server(EntityType::OSD, 11, for_clients, false);
    srv.set_policy(
        EntityType::OSD,
        Policy::lossless_peer()
            .with_features(ALL, Features::REQUIRED_DEFAULT | Features::SERVER_PACIFIC),
    );
    // Old peers: every policy of theirs lacks SERVER_PACIFIC.
    let old = Policy::lossy_client()
        .with_features(all_but(Features::SERVER_PACIFIC), Features::REQUIRED_DEFAULT);
    let (osd, osd_rx) = client(EntityType::OSD, 12, old);
    let (cli, cli_rx) = client(EntityType::CLIENT, 13, old);
    let to = server_addr(proto, &srv);

    let refused = osd.connect_to(EntityType::OSD, to);
    refused.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"x"))).expect("send");
    expect_refused(&osd_rx, &refused, "osd peer lacking SERVER_PACIFIC");
    assert_eq!(refused.features(), Features::NONE);

    let accepted = cli.connect_to(EntityType::OSD, to);
    let theirs = expect_open(&accepted, &cli_rx, &srv_rx, "client peer");
    let want = all_but(Features::SERVER_PACIFIC) & all_but(Features::OSD_FIXED_COLLECTION_LIST);
    assert_eq!(accepted.features(), want, "client's negotiated features");
    assert_eq!(theirs.features(), want, "server's negotiated features");
    assert!(!want.contains(Features::SERVER_PACIFIC));
    assert!(!want.contains(Features::OSD_FIXED_COLLECTION_LIST));
    // The refused OSD never reached the server's dispatchers.
    while let Ok(seen) = srv_rx.try_recv() {
        if let Seen::Accept(c) | Seen::Message(c, _) = &seen {
            assert_eq!(c, &theirs, "only the client-typed peer was accepted: {seen:?}");
        }
    }
    for m in [osd, cli, srv] {
        m.shutdown();
    }
}

/// A client whose policy for OSDs requires SERVER_PACIFIC refuses an OSD whose policy for
/// clients does not advertise it, and opens to a monitor with the same features (its
/// policy for monitors requires nothing more).
fn per_type_required_on_connect(proto: ProtocolVersion) {
    let old_server = Policy::stateless_server()
        .with_features(all_but(Features::SERVER_PACIFIC), Features::REQUIRED_DEFAULT);
    let (osd, _, _osd_rx) = server(EntityType::OSD, 21, old_server, false);
    let (mon, _, mon_rx) = server(EntityType::MON, 22, old_server, false);
    let (cli, cli_rx) = client(EntityType::CLIENT, 23, Policy::lossy_client());
    cli.set_policy(
        EntityType::OSD,
        Policy::lossy_client()
            .with_features(ALL, Features::REQUIRED_DEFAULT | Features::SERVER_PACIFIC),
    );

    let refused = cli.connect_to(EntityType::OSD, server_addr(proto, &osd));
    refused.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"x"))).expect("send");
    expect_refused(&cli_rx, &refused, "osd lacking SERVER_PACIFIC");

    let accepted = cli.connect_to(EntityType::MON, server_addr(proto, &mon));
    let theirs = expect_open(&accepted, &cli_rx, &mon_rx, "monitor");
    assert_eq!(accepted.features(), all_but(Features::SERVER_PACIFIC));
    assert_eq!(theirs.features(), all_but(Features::SERVER_PACIFIC));
    for m in [cli, osd, mon] {
        m.shutdown();
    }
}

#[test]
fn v1_acceptor_requires_per_peer_type() {
    per_type_required_on_accept(ProtocolVersion::V1);
}

#[test]
fn v2_acceptor_requires_per_peer_type() {
    per_type_required_on_accept(ProtocolVersion::V2);
}

#[test]
fn v1_connector_requires_per_dialled_type() {
    per_type_required_on_connect(ProtocolVersion::V1);
}

#[test]
fn v2_connector_requires_per_dialled_type() {
    per_type_required_on_connect(ProtocolVersion::V2);
}

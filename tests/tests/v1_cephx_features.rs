//! The feature bits a msgr v1 acceptor requires of a connect that carries a cephx
//! authorizer (Ceph's `ProtocolV1::handle_connect_message_2`): MSG_AUTH where
//! signatures are required (`cephx_require_signatures`, or
//! `cephx_cluster_require_signatures` for an OSD, MDS or MGR peer and
//! `cephx_service_require_signatures` for any other), CEPHX_V2 where cephx v2 is
//! (`cephx_require_version`, or the cluster or service one, `>= 2`). A peer lacking one
//! is answered FEATURES, with the bit in the reply's features, before its authorizer is
//! looked at; a connect with another authorizer protocol is not held to them.

use std::io::{Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Messenger, Policy};
use protocol::auth::{AuthConfig, AuthProvider};
use protocol::types::{proto_version, EntityName, EntityType, Features, AUTH_CEPHX, AUTH_NONE};
use protocol::wire::{ConnectMsg, ConnectReply, Tag, CONNECT_LOSSY, MAX_AUTHORIZER_LEN};
use tests::cephx::TestCluster;
use tests::hostile::banner_socket;
use tests::loopback::{test_config, Recorder, Seen};

const ALL: Features = Features::PACIFIC_ADVERTISED;

/// An OSD verifying cephx with `config`, listening on loopback.
fn osd(cluster: &mut TestCluster, config: AuthConfig) -> (Messenger, SocketAddr, Receiver<Seen>) {
    let provider = cluster.provider(EntityName::new(EntityType::OSD, 0), Some(config));
    let m = Messenger::new(
        EntityName::new(EntityType::OSD, 0),
        7,
        test_config(1).with_auth_provider(provider),
    )
    .expect("messenger");
    m.set_default_policy(Policy::stateless_server());
    m.set_policy(EntityType::OSD, Policy::lossless_peer());
    let bound = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (rec, rx) = Recorder::new(false);
    m.add_dispatcher_head(rec).expect("dispatcher");
    (m, bound, rx)
}

/// One connect from a `host_type` peer with `features`, carrying `authorizer` under
/// `method`, on a fresh socket past the banners; the reply.
fn connect(
    server: SocketAddr,
    host_type: EntityType,
    features: Features,
    method: u32,
    authorizer: &[u8],
) -> ConnectReply {
    let mut sock = banner_socket(server);
    let msg = ConnectMsg {
        features,
        host_type,
        global_seq: 1,
        connect_seq: 0,
        protocol_version: proto_version(host_type, EntityType::OSD, true),
        authorizer_protocol: method,
        authorizer_len: u32::try_from(authorizer.len()).expect("small"),
        flags: if host_type == EntityType::CLIENT { CONNECT_LOSSY } else { 0 },
    };
    let mut out = Vec::new();
    msg.encode_with_authorizer(authorizer, &mut out);
    sock.write_all(&out).expect("send connect");
    let mut head = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut head).expect("connect reply");
    let (reply, _) = ConnectReply::decode(&head).expect("reply decodes");
    assert!(reply.authorizer_len as usize <= MAX_AUTHORIZER_LEN);
    reply
}

/// A valid cephx authorizer of `who` for the OSD service.
fn authorizer(cluster: &mut TestCluster, who: EntityName) -> Bytes {
    let p = cluster.provider(who, None);
    p.authorizer_client(EntityType::OSD).expect("ticket").expect("cephx authorizer").bytes()
}

#[test]
fn a_cephx_connect_without_the_required_bits_is_answered_features() {
    let client = EntityName::new(EntityType::CLIENT, 5);
    let peer_osd = EntityName::new(EntityType::OSD, 1);
    let me = EntityName::new(EntityType::OSD, 0);
    let mut cluster = TestCluster::new(&[me, client, peer_osd], rand::random());
    let from_client = authorizer(&mut cluster, client);
    let from_osd = authorizer(&mut cluster, peer_osd);

    // Signatures required of clients (service) only; cephx v2 at Ceph's default (2).
    let mut config = AuthConfig::ceph_defaults();
    config.cephx_service_require_signatures = true;
    let (srv, addr, _rx) = osd(&mut cluster, config);

    let cases = [
        // A client without MSG_AUTH.
        (EntityType::CLIENT, ALL & !Features::MSG_AUTH, &from_client, Features::MSG_AUTH),
        // A client without CEPHX_V2 (it could not answer the challenge).
        (EntityType::CLIENT, ALL & !Features::CEPHX_V2, &from_client, Features::CEPHX_V2),
        // An OSD without CEPHX_V2 (cephx_cluster_require_version is 2 too).
        (EntityType::OSD, ALL & !Features::CEPHX_V2, &from_osd, Features::CEPHX_V2),
    ];
    for (ty, features, auth, bit) in cases {
        let reply = connect(addr, ty, features, AUTH_CEPHX, auth);
        assert_eq!(
            reply.tag,
            Tag::FEATURES,
            "a {ty} cephx connect lacking {bit}: {reply:?} (Ceph answers FEATURES)"
        );
        assert!(reply.features.contains(bit), "{bit} not in the reply's features: {reply:?}");
    }

    // Held to the cluster options, an OSD without MSG_AUTH is let through the feature
    // check here (only the service options require signatures) and on to its
    // authorizer, which is good: it is challenged (it has CEPHX_V2).
    let reply = connect(addr, EntityType::OSD, ALL & !Features::MSG_AUTH, AUTH_CEPHX, &from_osd);
    assert_eq!(reply.tag, Tag::CHALLENGE_AUTHORIZER, "{reply:?}");

    // Only a cephx connect is held to them: an auth-none connect lacking both bits is
    // refused for its method, not for its features.
    let bare = ALL & !Features::MSG_AUTH & !Features::CEPHX_V2;
    let reply = connect(addr, EntityType::CLIENT, bare, AUTH_NONE, &[]);
    assert_ne!(reply.tag, Tag::FEATURES, "{reply:?}");
    drop(srv);
}

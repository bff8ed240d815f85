//! Session behaviour against a scripted, misbehaving SMSC written with the crate's own codec:
//! enquire_link timeouts, hostile frames, requests the ESME does not serve, SMSC-initiated
//! unbind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use haven_channel::{ChannelEvent, InboundSink, SinkError};
use haven_smpp::pdu::{BindResp, Packet, Pdu, Sm, command_id, status};
use haven_smpp::session::FrameReader;
use haven_smpp::{Smsc, SmscConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

struct NullSink;

#[async_trait::async_trait]
impl InboundSink for NullSink {
    async fn receive(&self, _e: ChannelEvent) -> Result<(), SinkError> {
        Ok(())
    }
}

fn config(port: u16) -> SmscConfig {
    SmscConfig {
        name: "peer".into(),
        host: "127.0.0.1".into(),
        port,
        system_id: "haven".into(),
        password: "secret".into(),
        enquire_link_interval: Duration::from_millis(200),
        response_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(100),
        ..Default::default()
    }
}

type Reader = FrameReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

async fn next_packet(r: &mut Reader) -> Packet {
    let frame = timeout(WAIT, r.next())
        .await
        .expect("a PDU in time")
        .expect("readable")
        .expect("not EOF");
    Packet::decode(&frame).expect("the ESME sends valid PDUs")
}

async fn send(w: &mut Writer, p: Packet) {
    w.write_all(&p.encode().unwrap()).await.unwrap();
}

/// Accept one connection and complete the bind.
async fn accept_bound(l: &TcpListener) -> (Reader, Writer) {
    let (s, _) = timeout(WAIT, l.accept())
        .await
        .expect("a connection")
        .unwrap();
    let (r, mut w) = TcpStream::into_split(s);
    let mut r = FrameReader::new(r);
    let bind = next_packet(&mut r).await;
    match &bind.pdu {
        Pdu::BindTransceiver(b) => {
            assert_eq!(b.system_id, "haven");
            assert_eq!(b.password, "secret");
            assert_eq!(b.interface_version, 0x34);
        }
        other => panic!("expected bind_transceiver, got {other:?}"),
    }
    send(
        &mut w,
        Packet::new(
            bind.sequence_number,
            Pdu::BindTransceiverResp(BindResp {
                system_id: "peer".into(),
                tlvs: vec![],
            }),
        ),
    )
    .await;
    (r, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_enquire_link_drops_and_reconnects() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smsc = Smsc::start(config(l.local_addr().unwrap().port()), Arc::new(NullSink));
    let (mut r, _w) = accept_bound(&l).await;
    let probe = next_packet(&mut r).await;
    assert_eq!(probe.pdu, Pdu::EnquireLink);
    // never answer: the ESME gives up after response_timeout and binds again
    let (_r2, _w2) = accept_bound(&l).await;
    smsc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_enquire_link_keeps_the_session() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smsc = Smsc::start(config(l.local_addr().unwrap().port()), Arc::new(NullSink));
    let (mut r, mut w) = accept_bound(&l).await;
    for _ in 0..4 {
        let p = next_packet(&mut r).await;
        assert_eq!(p.pdu, Pdu::EnquireLink);
        send(&mut w, Packet::new(p.sequence_number, Pdu::EnquireLinkResp)).await;
    }
    assert!(smsc.is_bound());
    // no second connection was attempted
    assert!(
        timeout(Duration::from_millis(100), l.accept())
            .await
            .is_err()
    );
    smsc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_smscs_requests_and_refuses_the_rest() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(l.local_addr().unwrap().port());
    cfg.enquire_link_interval = Duration::from_secs(60);
    let smsc = Smsc::start(cfg, Arc::new(NullSink));
    let (mut r, mut w) = accept_bound(&l).await;

    send(&mut w, Packet::new(7, Pdu::EnquireLink)).await;
    let p = next_packet(&mut r).await;
    assert_eq!((p.sequence_number, p.pdu), (7, Pdu::EnquireLinkResp));

    // data_sm is not served
    send(
        &mut w,
        Packet::new(
            8,
            Pdu::Other {
                command_id: command_id::DATA_SM,
                body: vec![0; 12],
            },
        ),
    )
    .await;
    let p = next_packet(&mut r).await;
    assert_eq!(p.sequence_number, 8);
    assert_eq!(p.pdu, Pdu::GenericNack);
    assert_eq!(p.command_status, status::ESME_RINVCMDID);

    // a deliver_sm whose body is cut short
    let mut bytes = Packet::new(9, Pdu::DeliverSm(Box::default()))
        .encode()
        .unwrap();
    bytes.truncate(bytes.len() - 3);
    let len = u32::try_from(bytes.len()).unwrap();
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    w.write_all(&bytes).await.unwrap();
    let p = next_packet(&mut r).await;
    assert_eq!(p.sequence_number, 9);
    assert_eq!(p.pdu, Pdu::GenericNack);
    assert_ne!(p.command_status, status::ESME_ROK);

    // a well-formed MO is acknowledged
    let mo = Sm {
        source_addr_ton: 1,
        source_addr: "14155550123".into(),
        dest_addr_ton: 1,
        destination_addr: "14155550199".into(),
        short_message: b"hi".to_vec(),
        ..Default::default()
    };
    send(&mut w, Packet::new(10, Pdu::DeliverSm(Box::new(mo)))).await;
    let p = next_packet(&mut r).await;
    assert_eq!(p.sequence_number, 10);
    assert!(matches!(p.pdu, Pdu::DeliverSmResp(_)));
    assert_eq!(p.command_status, status::ESME_ROK);

    // the SMSC unbinds: answered, then the ESME reconnects
    send(&mut w, Packet::new(11, Pdu::Unbind)).await;
    let p = next_packet(&mut r).await;
    assert_eq!((p.sequence_number, p.pdu), (11, Pdu::UnbindResp));
    let (_r2, _w2) = accept_bound(&l).await;
    smsc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frame_drops_the_session_and_fails_in_flight() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(l.local_addr().unwrap().port());
    cfg.enquire_link_interval = Duration::from_secs(60);
    cfg.response_timeout = Duration::from_secs(5);
    let smsc = Arc::new(Smsc::start(cfg, Arc::new(NullSink)));
    let (mut r, mut w) = accept_bound(&l).await;
    timeout(WAIT, async {
        while !smsc.is_bound() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    let s2 = smsc.clone();
    let submit = tokio::spawn(async move {
        s2.submit(
            Sm {
                destination_addr: "14155550100".into(),
                short_message: b"x".to_vec(),
                ..Default::default()
            },
            tokio::time::Instant::now() + Duration::from_secs(5),
        )
        .await
    });
    let p = next_packet(&mut r).await;
    assert!(matches!(p.pdu, Pdu::SubmitSm(_)));
    // instead of a submit_sm_resp: a PDU claiming 4 GiB
    w.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 4])
        .await
        .unwrap();
    let err = timeout(WAIT, submit).await.unwrap().unwrap().unwrap_err();
    assert!(err.is_transient(), "{err}");
    let second = accept_bound(&l).await;
    drop(second); // close it rather than leave the shutdown's unbind unanswered
    smsc.shutdown().await;
}

//! Property tests: hostile bytes never panic the decoders, and every PDU type, the text
//! encodings and segmentation round-trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use haven_smpp::encoding::{self, Alphabet};
use haven_smpp::pdu::{
    self, Bind, BindResp, Header, Packet, Pdu, Sm, SmResp, Tlv, command_id, latin1,
};
use haven_smpp::receipt;
use proptest::prelude::*;

fn cstr(max_with_nul: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(1u8..=255, 0..max_with_nul).prop_map(|v| latin1(&v))
}

fn tlvs() -> impl Strategy<Value = Vec<Tlv>> {
    proptest::collection::vec(
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(tag, value)| Tlv { tag, value }),
        0..5,
    )
}

fn bind() -> impl Strategy<Value = Bind> {
    (
        cstr(pdu::max::SYSTEM_ID),
        cstr(pdu::max::PASSWORD),
        cstr(pdu::max::SYSTEM_TYPE),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        cstr(pdu::max::ADDRESS_RANGE),
    )
        .prop_map(
            |(system_id, password, system_type, interface_version, addr_ton, addr_npi, ar)| Bind {
                system_id,
                password,
                system_type,
                interface_version,
                addr_ton,
                addr_npi,
                address_range: ar,
            },
        )
}

fn bind_resp() -> impl Strategy<Value = BindResp> {
    (cstr(pdu::max::SYSTEM_ID), tlvs()).prop_map(|(system_id, tlvs)| BindResp { system_id, tlvs })
}

fn sm() -> impl Strategy<Value = Sm> {
    let addrs = (
        cstr(pdu::max::SERVICE_TYPE),
        any::<(u8, u8)>(),
        cstr(pdu::max::ADDR),
        any::<(u8, u8)>(),
        cstr(pdu::max::ADDR),
    );
    let flags = (
        any::<(u8, u8, u8)>(),
        cstr(pdu::max::TIME),
        cstr(pdu::max::TIME),
        any::<(u8, u8, u8, u8)>(),
    );
    let body = (proptest::collection::vec(any::<u8>(), 0..=255), tlvs());
    (addrs, flags, body).prop_map(
        |(
            (service_type, (sat, san), source_addr, (dat, dan), destination_addr),
            ((esm_class, protocol_id, priority_flag), sdt, vp, (rd, rip, dc, dflt)),
            (short_message, tlvs),
        )| Sm {
            service_type,
            source_addr_ton: sat,
            source_addr_npi: san,
            source_addr,
            dest_addr_ton: dat,
            dest_addr_npi: dan,
            destination_addr,
            esm_class,
            protocol_id,
            priority_flag,
            schedule_delivery_time: sdt,
            validity_period: vp,
            registered_delivery: rd,
            replace_if_present_flag: rip,
            data_coding: dc,
            sm_default_msg_id: dflt,
            short_message,
            tlvs,
        },
    )
}

fn sm_resp() -> impl Strategy<Value = SmResp> {
    cstr(pdu::max::MESSAGE_ID).prop_map(|message_id| SmResp { message_id })
}

const KNOWN: [u32; 15] = [
    command_id::GENERIC_NACK,
    command_id::BIND_RECEIVER,
    command_id::BIND_RECEIVER_RESP,
    command_id::BIND_TRANSMITTER,
    command_id::BIND_TRANSMITTER_RESP,
    command_id::SUBMIT_SM,
    command_id::SUBMIT_SM_RESP,
    command_id::DELIVER_SM,
    command_id::DELIVER_SM_RESP,
    command_id::UNBIND,
    command_id::UNBIND_RESP,
    command_id::BIND_TRANSCEIVER,
    command_id::BIND_TRANSCEIVER_RESP,
    command_id::ENQUIRE_LINK,
    command_id::ENQUIRE_LINK_RESP,
];

fn any_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        bind().prop_map(Pdu::BindTransmitter),
        bind().prop_map(Pdu::BindReceiver),
        bind().prop_map(Pdu::BindTransceiver),
        bind_resp().prop_map(Pdu::BindTransmitterResp),
        bind_resp().prop_map(Pdu::BindReceiverResp),
        bind_resp().prop_map(Pdu::BindTransceiverResp),
        sm().prop_map(|s| Pdu::SubmitSm(Box::new(s))),
        sm().prop_map(|s| Pdu::DeliverSm(Box::new(s))),
        sm_resp().prop_map(Pdu::SubmitSmResp),
        sm_resp().prop_map(Pdu::DeliverSmResp),
        Just(Pdu::EnquireLink),
        Just(Pdu::EnquireLinkResp),
        Just(Pdu::Unbind),
        Just(Pdu::UnbindResp),
        Just(Pdu::GenericNack),
        (
            any::<u32>().prop_filter("unknown command", |c| !KNOWN.contains(c)),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(command_id, body)| Pdu::Other { command_id, body }),
    ]
}

/// A frame with a consistent header around arbitrary body bytes, so decoding goes deep.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![proptest::sample::select(KNOWN.to_vec()), any::<u32>()],
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|(cmd, st, seq, body)| {
            let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
            let mut f = Vec::with_capacity(16 + body.len());
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&cmd.to_be_bytes());
            f.extend_from_slice(&st.to_be_bytes());
            f.extend_from_slice(&seq.to_be_bytes());
            f.extend_from_slice(&body);
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Header::parse(&bytes);
        let _ = pdu::frame_len(&bytes);
        let _ = Packet::decode(&bytes);
    }

    #[test]
    fn framed_garbage_never_panics(frame in framed_garbage()) {
        if let Ok(p) = Packet::decode(&frame) {
            // whatever decodes must re-encode (it may differ: bodies can carry stray bytes)
            if let Ok(again) = p.encode() {
                prop_assert_eq!(Packet::decode(&again), Ok(p));
            }
        }
    }

    #[test]
    fn encode_decode_round_trips(pdu in any_pdu(), status in any::<u32>(), seq in any::<u32>()) {
        let p = Packet { command_status: status, sequence_number: seq, pdu };
        let bytes = p.encode().expect("generated PDUs are encodable");
        prop_assert_eq!(pdu::frame_len(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(Packet::decode(&bytes), Ok(p));
    }

    #[test]
    fn frame_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let mut r = haven_smpp::session::FrameReader::new(&bytes[..]);
            for _ in 0..64 {
                match r.next().await {
                    Ok(Some(f)) => { let _ = Packet::decode(&f); }
                    _ => break,
                }
            }
        });
    }

    #[test]
    fn text_decoders_never_panic(dc in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = encoding::decode_text(dc, &bytes);
        let (_, payload) = encoding::split_udh(&bytes);
        prop_assert!(payload.len() <= bytes.len());
        let sm = Sm { esm_class: 0x44, data_coding: dc, short_message: bytes, ..Default::default() };
        let _ = receipt::from_deliver_sm(&sm);
    }

    #[test]
    fn receipt_text_never_panics(s in ".{0,200}") {
        let _ = receipt::parse_text(&s);
        let _ = receipt::map_stat(&s);
    }

    #[test]
    fn gsm_round_trips(s in "[@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,./0-9:;<=>?¡A-ZÄÖÑÜ§¿a-zäöñüà^{}\\\\\\[~\\]|€-]{0,400}") {
        let enc = encoding::gsm_encode(&s).expect("all GSM");
        prop_assert_eq!(encoding::gsm_decode(&enc), s.clone());
        let seg = encoding::segment(&s).expect("short enough");
        prop_assert_eq!(seg.alphabet, Alphabet::Gsm);
        let single = seg.parts.len() == 1;
        for p in &seg.parts {
            let cap = if single { 160 } else { 153 };
            prop_assert!(p.len() <= cap);
            // an escape never ends a part
            let mut i = 0;
            while i < p.len() {
                if p[i] == 0x1B { prop_assert!(i + 1 < p.len()); i += 2; } else { i += 1; }
            }
        }
        let joined: String = seg.parts.iter().map(|p| encoding::gsm_decode(p)).collect();
        prop_assert_eq!(joined, s);
    }

    #[test]
    fn any_text_segments_and_round_trips(s in any::<String>().prop_map(|s| s.chars().take(500).collect::<String>())) {
        let seg = encoding::segment(&s).expect("short enough");
        let single = seg.parts.len() == 1;
        let joined: String = seg.parts.iter()
            .map(|p| encoding::decode_text(seg.alphabet.data_coding(), p))
            .collect();
        prop_assert_eq!(&joined, &s);
        for p in &seg.parts {
            match seg.alphabet {
                Alphabet::Gsm => {
                    let cap = if single { 160 } else { 153 };
                    prop_assert!(p.len() <= cap);
                }
                Alphabet::Ucs2 => {
                    let cap = if single { 140 } else { 134 };
                    prop_assert!(p.len() <= cap);
                    // each part decodes cleanly on its own: no split surrogate pair
                    prop_assert!(String::from_utf16(&p.chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>()).is_ok());
                }
            }
        }
        // the wire form reassembles through the UDH parser
        let sms = encoding::build_short_messages(&seg, 7);
        let mut payloads = Vec::new();
        for (i, (esm, body)) in sms.iter().enumerate() {
            if sms.len() > 1 {
                prop_assert_eq!(*esm, encoding::ESM_UDHI);
                let (c, payload) = encoding::split_udh(body);
                let c = c.expect("concat UDH");
                prop_assert_eq!(usize::from(c.seq), i + 1);
                prop_assert_eq!(usize::from(c.total), sms.len());
                payloads.extend_from_slice(payload);
            } else {
                payloads.extend_from_slice(body);
            }
        }
        prop_assert_eq!(encoding::decode_text(seg.alphabet.data_coding(), &payloads), s);
    }
}

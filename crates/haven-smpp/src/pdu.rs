//! The SMPP 3.4 wire codec: headers, the PDUs an ESME needs, C-octet strings, optional TLVs and
//! command status codes.
//!
//! The SMSC is a network peer, so decoding treats every byte as hostile: every read is
//! bounds-checked, every failure is a typed [`DecodeError`], and nothing here panics. A PDU's
//! `command_length` is capped at [`MAX_PDU_LEN`] before anything is allocated for it.
//!
//! C-octet strings are carried as Latin-1 (`String` holds the bytes mapped one-to-one to
//! U+0000..U+00FF), so decoding any byte sequence and encoding it again gives the same bytes.

use std::fmt;

/// Length of the PDU header (`command_length`, `command_id`, `command_status`,
/// `sequence_number`).
pub const HEADER_LEN: usize = 16;

/// The largest PDU accepted or produced (header included). A peer announcing more is cut off.
pub const MAX_PDU_LEN: usize = 64 * 1024;

/// The SMPP version this codec speaks (`interface_version` in binds).
pub const INTERFACE_VERSION: u8 = 0x34;

/// `command_id` values.
pub mod command_id {
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    pub const BIND_RECEIVER_RESP: u32 = 0x8000_0001;
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    pub const BIND_TRANSMITTER_RESP: u32 = 0x8000_0002;
    pub const QUERY_SM: u32 = 0x0000_0003;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    pub const REPLACE_SM: u32 = 0x0000_0007;
    pub const CANCEL_SM: u32 = 0x0000_0008;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    pub const OUTBIND: u32 = 0x0000_000B;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
    pub const SUBMIT_MULTI: u32 = 0x0000_0021;
    pub const ALERT_NOTIFICATION: u32 = 0x0000_0102;
    pub const DATA_SM: u32 = 0x0000_0103;

    /// The bit set on every response `command_id`.
    pub const RESPONSE_BIT: u32 = 0x8000_0000;
}

/// `command_status` values (SMPP 3.4 §5.1.3).
pub mod status {
    pub const ESME_ROK: u32 = 0x0000_0000;
    pub const ESME_RINVMSGLEN: u32 = 0x0000_0001;
    pub const ESME_RINVCMDLEN: u32 = 0x0000_0002;
    pub const ESME_RINVCMDID: u32 = 0x0000_0003;
    pub const ESME_RINVBNDSTS: u32 = 0x0000_0004;
    pub const ESME_RALYBND: u32 = 0x0000_0005;
    pub const ESME_RINVPRTFLG: u32 = 0x0000_0006;
    pub const ESME_RINVREGDLVFLG: u32 = 0x0000_0007;
    pub const ESME_RSYSERR: u32 = 0x0000_0008;
    pub const ESME_RINVSRCADR: u32 = 0x0000_000A;
    pub const ESME_RINVDSTADR: u32 = 0x0000_000B;
    pub const ESME_RINVMSGID: u32 = 0x0000_000C;
    pub const ESME_RBINDFAIL: u32 = 0x0000_000D;
    pub const ESME_RINVPASWD: u32 = 0x0000_000E;
    pub const ESME_RINVSYSID: u32 = 0x0000_000F;
    pub const ESME_RCANCELFAIL: u32 = 0x0000_0011;
    pub const ESME_RREPLACEFAIL: u32 = 0x0000_0013;
    pub const ESME_RMSGQFUL: u32 = 0x0000_0014;
    pub const ESME_RINVSERTYP: u32 = 0x0000_0015;
    pub const ESME_RINVNUMDESTS: u32 = 0x0000_0033;
    pub const ESME_RINVDLNAME: u32 = 0x0000_0034;
    pub const ESME_RINVDESTFLAG: u32 = 0x0000_0040;
    pub const ESME_RINVSUBREP: u32 = 0x0000_0042;
    pub const ESME_RINVESMCLASS: u32 = 0x0000_0043;
    pub const ESME_RCNTSUBDL: u32 = 0x0000_0044;
    pub const ESME_RSUBMITFAIL: u32 = 0x0000_0045;
    pub const ESME_RINVSRCTON: u32 = 0x0000_0048;
    pub const ESME_RINVSRCNPI: u32 = 0x0000_0049;
    pub const ESME_RINVDSTTON: u32 = 0x0000_0050;
    pub const ESME_RINVDSTNPI: u32 = 0x0000_0051;
    pub const ESME_RINVSYSTYP: u32 = 0x0000_0053;
    pub const ESME_RINVREPFLAG: u32 = 0x0000_0054;
    pub const ESME_RINVNUMMSGS: u32 = 0x0000_0055;
    pub const ESME_RTHROTTLED: u32 = 0x0000_0058;
    pub const ESME_RINVSCHED: u32 = 0x0000_0061;
    pub const ESME_RINVEXPIRY: u32 = 0x0000_0062;
    pub const ESME_RINVDFTMSGID: u32 = 0x0000_0063;
    pub const ESME_RX_T_APPN: u32 = 0x0000_0064;
    pub const ESME_RX_P_APPN: u32 = 0x0000_0065;
    pub const ESME_RX_R_APPN: u32 = 0x0000_0066;
    pub const ESME_RQUERYFAIL: u32 = 0x0000_0067;
    pub const ESME_RINVOPTPARSTREAM: u32 = 0x0000_00C0;
    pub const ESME_ROPTPARNOTALLWD: u32 = 0x0000_00C1;
    pub const ESME_RINVPARLEN: u32 = 0x0000_00C2;
    pub const ESME_RMISSINGOPTPARAM: u32 = 0x0000_00C3;
    pub const ESME_RINVOPTPARAMVAL: u32 = 0x0000_00C4;
    pub const ESME_RDELIVERYFAILURE: u32 = 0x0000_00FE;
    pub const ESME_RUNKNOWNERR: u32 = 0x0000_00FF;

    /// The symbolic name of a status, when it is a standard one.
    pub fn name(status: u32) -> Option<&'static str> {
        Some(match status {
            ESME_ROK => "ESME_ROK",
            ESME_RINVMSGLEN => "ESME_RINVMSGLEN",
            ESME_RINVCMDLEN => "ESME_RINVCMDLEN",
            ESME_RINVCMDID => "ESME_RINVCMDID",
            ESME_RINVBNDSTS => "ESME_RINVBNDSTS",
            ESME_RALYBND => "ESME_RALYBND",
            ESME_RINVPRTFLG => "ESME_RINVPRTFLG",
            ESME_RINVREGDLVFLG => "ESME_RINVREGDLVFLG",
            ESME_RSYSERR => "ESME_RSYSERR",
            ESME_RINVSRCADR => "ESME_RINVSRCADR",
            ESME_RINVDSTADR => "ESME_RINVDSTADR",
            ESME_RINVMSGID => "ESME_RINVMSGID",
            ESME_RBINDFAIL => "ESME_RBINDFAIL",
            ESME_RINVPASWD => "ESME_RINVPASWD",
            ESME_RINVSYSID => "ESME_RINVSYSID",
            ESME_RCANCELFAIL => "ESME_RCANCELFAIL",
            ESME_RREPLACEFAIL => "ESME_RREPLACEFAIL",
            ESME_RMSGQFUL => "ESME_RMSGQFUL",
            ESME_RINVSERTYP => "ESME_RINVSERTYP",
            ESME_RINVNUMDESTS => "ESME_RINVNUMDESTS",
            ESME_RINVDLNAME => "ESME_RINVDLNAME",
            ESME_RINVDESTFLAG => "ESME_RINVDESTFLAG",
            ESME_RINVSUBREP => "ESME_RINVSUBREP",
            ESME_RINVESMCLASS => "ESME_RINVESMCLASS",
            ESME_RCNTSUBDL => "ESME_RCNTSUBDL",
            ESME_RSUBMITFAIL => "ESME_RSUBMITFAIL",
            ESME_RINVSRCTON => "ESME_RINVSRCTON",
            ESME_RINVSRCNPI => "ESME_RINVSRCNPI",
            ESME_RINVDSTTON => "ESME_RINVDSTTON",
            ESME_RINVDSTNPI => "ESME_RINVDSTNPI",
            ESME_RINVSYSTYP => "ESME_RINVSYSTYP",
            ESME_RINVREPFLAG => "ESME_RINVREPFLAG",
            ESME_RINVNUMMSGS => "ESME_RINVNUMMSGS",
            ESME_RTHROTTLED => "ESME_RTHROTTLED",
            ESME_RINVSCHED => "ESME_RINVSCHED",
            ESME_RINVEXPIRY => "ESME_RINVEXPIRY",
            ESME_RINVDFTMSGID => "ESME_RINVDFTMSGID",
            ESME_RX_T_APPN => "ESME_RX_T_APPN",
            ESME_RX_P_APPN => "ESME_RX_P_APPN",
            ESME_RX_R_APPN => "ESME_RX_R_APPN",
            ESME_RQUERYFAIL => "ESME_RQUERYFAIL",
            ESME_RINVOPTPARSTREAM => "ESME_RINVOPTPARSTREAM",
            ESME_ROPTPARNOTALLWD => "ESME_ROPTPARNOTALLWD",
            ESME_RINVPARLEN => "ESME_RINVPARLEN",
            ESME_RMISSINGOPTPARAM => "ESME_RMISSINGOPTPARAM",
            ESME_RINVOPTPARAMVAL => "ESME_RINVOPTPARAMVAL",
            ESME_RDELIVERYFAILURE => "ESME_RDELIVERYFAILURE",
            ESME_RUNKNOWNERR => "ESME_RUNKNOWNERR",
            _ => return None,
        })
    }

    /// A status as the carrier's error code: `0x0000000B`.
    pub fn code(status: u32) -> String {
        format!("0x{status:08X}")
    }

    /// A status for logs: `ESME_RINVDSTADR (0x0000000B)`.
    pub fn describe(status: u32) -> String {
        match name(status) {
            Some(n) => format!("{n} ({})", code(status)),
            None => code(status),
        }
    }
}

/// How a non-zero `command_status` on a response should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// `ESME_ROK`.
    Ok,
    /// The SMSC could not take it now; the same PDU may succeed later (throttled, queue full,
    /// system error, temporary application error, not bound, submit failed, unknown error).
    Transient,
    /// The SMSC refused this PDU for good (bad address, bad parameters, …).
    Permanent,
}

/// Classify a `command_status`. Anything not known to be temporary is permanent: retrying a
/// request the SMSC understood and refused only burns throughput and money.
pub fn classify_status(status: u32) -> StatusClass {
    use status::*;
    match status {
        ESME_ROK => StatusClass::Ok,
        ESME_RTHROTTLED
        | ESME_RMSGQFUL
        | ESME_RSYSERR
        | ESME_RX_T_APPN
        | ESME_RINVBNDSTS
        | ESME_RSUBMITFAIL
        | ESME_RDELIVERYFAILURE
        | ESME_RUNKNOWNERR => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

/// Well-known optional parameter (TLV) tags.
pub mod tag {
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    pub const SC_INTERFACE_VERSION: u16 = 0x0210;
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub const MESSAGE_STATE: u16 = 0x0427;
}

/// Maximum C-octet string sizes (terminating NUL included) from SMPP 3.4 §4, as used when
/// encoding. Decoding allows [`max::DECODE_ADDR_MAX`] for addresses: real SMSCs send longer ones.
pub mod max {
    pub const SYSTEM_ID: usize = 16;
    pub const PASSWORD: usize = 9;
    pub const SYSTEM_TYPE: usize = 13;
    pub const ADDRESS_RANGE: usize = 41;
    pub const SERVICE_TYPE: usize = 6;
    pub const ADDR: usize = 21;
    pub const TIME: usize = 17;
    pub const MESSAGE_ID: usize = 65;
    /// Addresses accepted on decode (deliver_sm from real networks can exceed 21).
    pub const DECODE_ADDR_MAX: usize = 65;
}

/// The PDU header (SMPP 3.4 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub command_length: u32,
    pub command_id: u32,
    pub command_status: u32,
    pub sequence_number: u32,
}

impl Header {
    /// Parse the 16-byte header at the start of `buf` and check `command_length` against
    /// [`HEADER_LEN`]..=[`MAX_PDU_LEN`].
    pub fn parse(buf: &[u8]) -> Result<Header, DecodeError> {
        let mut r = Reader::new(buf);
        let command_length = r.u32("command_length")?;
        let command_id = r.u32("command_id")?;
        let command_status = r.u32("command_status")?;
        let sequence_number = r.u32("sequence_number")?;
        check_length(command_length)?;
        Ok(Header {
            command_length,
            command_id,
            command_status,
            sequence_number,
        })
    }

    /// Whether this is a response (`command_id` has the response bit).
    pub fn is_response(&self) -> bool {
        self.command_id & command_id::RESPONSE_BIT != 0
    }
}

fn check_length(command_length: u32) -> Result<usize, DecodeError> {
    let len = command_length as usize;
    if len < HEADER_LEN {
        return Err(DecodeError::LengthTooSmall(command_length));
    }
    if len > MAX_PDU_LEN {
        return Err(DecodeError::LengthTooLarge(command_length));
    }
    Ok(len)
}

/// How many bytes the PDU starting at `buf` occupies, once its `command_length` is readable:
/// `Ok(None)` when fewer than 4 bytes are there yet, an error when the length is out of range
/// (the stream cannot be resynchronised after that).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    match buf.get(..4) {
        None => Ok(None),
        Some(b) => {
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            check_length(len).map(Some)
        }
    }
}

/// Why bytes from the peer are not a valid PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("command_length {0} is below the 16-byte header")]
    LengthTooSmall(u32),
    #[error("command_length {0} exceeds the {MAX_PDU_LEN}-byte cap")]
    LengthTooLarge(u32),
    #[error("command_length {declared} does not match the {actual} bytes given")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("PDU ends inside {field}")]
    Truncated { field: &'static str },
    #[error("C-octet string {field} has no NUL within {max} bytes")]
    Unterminated { field: &'static str, max: usize },
    #[error("optional parameter 0x{tag:04X} declares {len} bytes but {available} remain")]
    TlvOverrun {
        tag: u16,
        len: usize,
        available: usize,
    },
    #[error("{0} stray bytes after the last optional parameter")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// The `command_status` to answer a request whose body failed to decode.
    pub fn status(&self) -> u32 {
        match self {
            DecodeError::LengthTooSmall(_)
            | DecodeError::LengthTooLarge(_)
            | DecodeError::LengthMismatch { .. } => status::ESME_RINVCMDLEN,
            DecodeError::TlvOverrun { .. } | DecodeError::TrailingBytes(_) => {
                status::ESME_RINVOPTPARSTREAM
            }
            DecodeError::Truncated { .. } | DecodeError::Unterminated { .. } => {
                status::ESME_RINVMSGLEN
            }
        }
    }
}

/// Why a PDU cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {len} bytes; at most {max} fit")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} holds a character outside Latin-1 or a NUL")]
    BadChar { field: &'static str },
    #[error("the PDU would be {0} bytes, over the {MAX_PDU_LEN}-byte cap")]
    PduTooLarge(usize),
}

/// A bounds-checked cursor over a PDU body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated { field })?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated { field })?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A C-octet string of at most `max` bytes including its NUL.
    fn cstr(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let window = &rest[..rest.len().min(max)];
        match window.iter().position(|&b| b == 0) {
            Some(nul) => {
                let s = latin1(&window[..nul]);
                self.pos += nul + 1;
                Ok(s)
            }
            None if rest.len() < max => Err(DecodeError::Truncated { field }),
            None => Err(DecodeError::Unterminated { field, max }),
        }
    }

    /// Optional parameters until the end of the body.
    fn tlvs(&mut self) -> Result<Vec<Tlv>, DecodeError> {
        let mut out = Vec::new();
        while self.remaining() > 0 {
            if self.remaining() < 4 {
                return Err(DecodeError::TrailingBytes(self.remaining()));
            }
            let tag = self.u16("tlv tag")?;
            let len = usize::from(self.u16("tlv length")?);
            let available = self.remaining();
            if len > available {
                return Err(DecodeError::TlvOverrun {
                    tag,
                    len,
                    available,
                });
            }
            let value = self.take(len, "tlv value")?.to_vec();
            out.push(Tlv { tag, value });
        }
        Ok(out)
    }
}

/// Bytes as Latin-1 text (one char per byte, never fails).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn cstr(&mut self, field: &'static str, s: &str, max: usize) -> Result<(), EncodeError> {
        let len = s.chars().count();
        if len + 1 > max {
            return Err(EncodeError::TooLong {
                field,
                len: len + 1,
                max,
            });
        }
        for c in s.chars() {
            let b = u8::try_from(u32::from(c)).map_err(|_| EncodeError::BadChar { field })?;
            if b == 0 {
                return Err(EncodeError::BadChar { field });
            }
            self.buf.push(b);
        }
        self.buf.push(0);
        Ok(())
    }
    fn tlvs(&mut self, tlvs: &[Tlv]) -> Result<(), EncodeError> {
        for t in tlvs {
            let len = u16::try_from(t.value.len()).map_err(|_| EncodeError::TooLong {
                field: "tlv value",
                len: t.value.len(),
                max: usize::from(u16::MAX),
            })?;
            self.u16(t.tag);
            self.u16(len);
            self.buf.extend_from_slice(&t.value);
        }
        Ok(())
    }
}

/// One optional parameter, kept generically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u16,
    pub value: Vec<u8>,
}

impl Tlv {
    /// A TLV with a C-octet string value (NUL appended).
    pub fn cstring(tag: u16, s: &str) -> Tlv {
        let mut value: Vec<u8> = s.bytes().filter(|&b| b != 0).collect();
        value.push(0);
        Tlv { tag, value }
    }

    /// A one-byte TLV.
    pub fn u8(tag: u16, v: u8) -> Tlv {
        Tlv {
            tag,
            value: vec![v],
        }
    }

    /// A two-byte TLV.
    pub fn u16(tag: u16, v: u16) -> Tlv {
        Tlv {
            tag,
            value: v.to_be_bytes().to_vec(),
        }
    }
}

/// Named accessors over a list of TLVs. Malformed values read as absent.
pub trait TlvList {
    /// The TLVs.
    fn tlv_slice(&self) -> &[Tlv];

    /// The value of the first TLV with this tag.
    fn tlv(&self, tag: u16) -> Option<&[u8]> {
        self.tlv_slice()
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.value.as_slice())
    }

    /// `receipted_message_id` (0x001E): a C-octet string; trailing NULs are dropped.
    fn receipted_message_id(&self) -> Option<String> {
        let v = self.tlv(tag::RECEIPTED_MESSAGE_ID)?;
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        let s = latin1(&v[..end]);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    /// `message_state` (0x0427).
    fn message_state(&self) -> Option<u8> {
        match self.tlv(tag::MESSAGE_STATE)? {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// `network_error_code` (0x0423): network type and error code.
    fn network_error_code(&self) -> Option<(u8, u16)> {
        match self.tlv(tag::NETWORK_ERROR_CODE)? {
            [t, hi, lo] => Some((*t, u16::from_be_bytes([*hi, *lo]))),
            _ => None,
        }
    }

    /// `sar_msg_ref_num` (0x020C).
    fn sar_msg_ref_num(&self) -> Option<u16> {
        match self.tlv(tag::SAR_MSG_REF_NUM)? {
            [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
            [v] => Some(u16::from(*v)),
            _ => None,
        }
    }

    /// `sar_total_segments` (0x020E).
    fn sar_total_segments(&self) -> Option<u8> {
        match self.tlv(tag::SAR_TOTAL_SEGMENTS)? {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// `sar_segment_seqnum` (0x020F).
    fn sar_segment_seqnum(&self) -> Option<u8> {
        match self.tlv(tag::SAR_SEGMENT_SEQNUM)? {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// `message_payload` (0x0424).
    fn message_payload(&self) -> Option<&[u8]> {
        self.tlv(tag::MESSAGE_PAYLOAD)
    }
}

/// Which kind of bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindType {
    /// Submit only; receipts and MO come on another (receiver) bind.
    Transmitter,
    /// Receive only.
    Receiver,
    /// Submit and receive on one connection.
    #[default]
    Transceiver,
}

impl BindType {
    /// Whether this bind may send submit_sm.
    pub fn can_submit(self) -> bool {
        !matches!(self, BindType::Receiver)
    }

    /// Whether the SMSC delivers deliver_sm on this bind.
    pub fn can_receive(self) -> bool {
        !matches!(self, BindType::Transmitter)
    }

    /// Name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            BindType::Transmitter => "transmitter",
            BindType::Receiver => "receiver",
            BindType::Transceiver => "transceiver",
        }
    }
}

/// The body of a bind_transmitter / bind_receiver / bind_transceiver. Fields are named and
/// ordered as in SMPP 3.4 §4.1.
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    pub system_id: String,
    /// Never logged: `Debug` hides it.
    pub password: String,
    pub system_type: String,
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: String,
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("interface_version", &self.interface_version)
            .finish_non_exhaustive()
    }
}

/// The body of a bind_*_resp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindResp {
    pub system_id: String,
    pub tlvs: Vec<Tlv>,
}

/// The body shared by submit_sm and deliver_sm. Fields are named and ordered as in SMPP 3.4
/// §4.4.1 / §4.6.1; `tlvs` holds the optional parameters in wire order.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Sm {
    pub service_type: String,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    pub source_addr: String,
    pub dest_addr_ton: u8,
    pub dest_addr_npi: u8,
    pub destination_addr: String,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: String,
    pub validity_period: String,
    pub registered_delivery: u8,
    pub replace_if_present_flag: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    /// Up to 255 bytes (the length travels in one octet), UDH included when `esm_class` has
    /// the UDHI bit (0x40).
    pub short_message: Vec<u8>,
    pub tlvs: Vec<Tlv>,
}

impl fmt::Debug for Sm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses and content are PHI.
        f.debug_struct("Sm")
            .field("esm_class", &self.esm_class)
            .field("data_coding", &self.data_coding)
            .field("registered_delivery", &self.registered_delivery)
            .field("sm_length", &self.short_message.len())
            .field(
                "tlv_tags",
                &self.tlvs.iter().map(|t| t.tag).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl TlvList for Sm {
    fn tlv_slice(&self) -> &[Tlv] {
        &self.tlvs
    }
}

impl TlvList for BindResp {
    fn tlv_slice(&self) -> &[Tlv] {
        &self.tlvs
    }
}

impl Sm {
    /// The UDHI bit of `esm_class`.
    pub const ESM_UDHI: u8 = 0x40;

    /// Whether `short_message` (or `message_payload`) starts with a user data header.
    pub fn has_udh(&self) -> bool {
        self.esm_class & Self::ESM_UDHI != 0
    }

    /// The message content: `message_payload` when `short_message` is empty and the TLV is
    /// present, else `short_message`.
    pub fn content(&self) -> &[u8] {
        match self.message_payload() {
            Some(p) if self.short_message.is_empty() => p,
            _ => &self.short_message,
        }
    }
}

/// A submit_sm_resp / deliver_sm_resp body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SmResp {
    /// The SMSC's id for the message (empty in deliver_sm_resp and in error responses).
    pub message_id: String,
}

/// A decoded PDU body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    BindTransmitter(Bind),
    BindTransmitterResp(BindResp),
    BindReceiver(Bind),
    BindReceiverResp(BindResp),
    BindTransceiver(Bind),
    BindTransceiverResp(BindResp),
    SubmitSm(Box<Sm>),
    SubmitSmResp(SmResp),
    DeliverSm(Box<Sm>),
    DeliverSmResp(SmResp),
    EnquireLink,
    EnquireLinkResp,
    Unbind,
    UnbindResp,
    GenericNack,
    /// A command this codec does not parse (answered with generic_nack when it is a request).
    Other {
        command_id: u32,
        body: Vec<u8>,
    },
}

impl Pdu {
    /// The `command_id` of this PDU.
    pub fn command_id(&self) -> u32 {
        use command_id as c;
        match self {
            Pdu::BindTransmitter(_) => c::BIND_TRANSMITTER,
            Pdu::BindTransmitterResp(_) => c::BIND_TRANSMITTER_RESP,
            Pdu::BindReceiver(_) => c::BIND_RECEIVER,
            Pdu::BindReceiverResp(_) => c::BIND_RECEIVER_RESP,
            Pdu::BindTransceiver(_) => c::BIND_TRANSCEIVER,
            Pdu::BindTransceiverResp(_) => c::BIND_TRANSCEIVER_RESP,
            Pdu::SubmitSm(_) => c::SUBMIT_SM,
            Pdu::SubmitSmResp(_) => c::SUBMIT_SM_RESP,
            Pdu::DeliverSm(_) => c::DELIVER_SM,
            Pdu::DeliverSmResp(_) => c::DELIVER_SM_RESP,
            Pdu::EnquireLink => c::ENQUIRE_LINK,
            Pdu::EnquireLinkResp => c::ENQUIRE_LINK_RESP,
            Pdu::Unbind => c::UNBIND,
            Pdu::UnbindResp => c::UNBIND_RESP,
            Pdu::GenericNack => c::GENERIC_NACK,
            Pdu::Other { command_id, .. } => *command_id,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Pdu::BindTransmitter(_) => "bind_transmitter",
            Pdu::BindTransmitterResp(_) => "bind_transmitter_resp",
            Pdu::BindReceiver(_) => "bind_receiver",
            Pdu::BindReceiverResp(_) => "bind_receiver_resp",
            Pdu::BindTransceiver(_) => "bind_transceiver",
            Pdu::BindTransceiverResp(_) => "bind_transceiver_resp",
            Pdu::SubmitSm(_) => "submit_sm",
            Pdu::SubmitSmResp(_) => "submit_sm_resp",
            Pdu::DeliverSm(_) => "deliver_sm",
            Pdu::DeliverSmResp(_) => "deliver_sm_resp",
            Pdu::EnquireLink => "enquire_link",
            Pdu::EnquireLinkResp => "enquire_link_resp",
            Pdu::Unbind => "unbind",
            Pdu::UnbindResp => "unbind_resp",
            Pdu::GenericNack => "generic_nack",
            Pdu::Other { .. } => "other",
        }
    }
}

/// A whole PDU: header fields plus body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub command_status: u32,
    pub sequence_number: u32,
    pub pdu: Pdu,
}

impl Packet {
    /// A request or response with status `ESME_ROK`.
    pub fn new(sequence_number: u32, pdu: Pdu) -> Packet {
        Packet {
            command_status: status::ESME_ROK,
            sequence_number,
            pdu,
        }
    }

    /// Encode to wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer {
            buf: Vec::with_capacity(64),
        };
        w.u32(0); // patched below
        w.u32(self.pdu.command_id());
        w.u32(self.command_status);
        w.u32(self.sequence_number);
        match &self.pdu {
            Pdu::BindTransmitter(b) | Pdu::BindReceiver(b) | Pdu::BindTransceiver(b) => {
                w.cstr("system_id", &b.system_id, max::SYSTEM_ID)?;
                w.cstr("password", &b.password, max::PASSWORD)?;
                w.cstr("system_type", &b.system_type, max::SYSTEM_TYPE)?;
                w.u8(b.interface_version);
                w.u8(b.addr_ton);
                w.u8(b.addr_npi);
                w.cstr("address_range", &b.address_range, max::ADDRESS_RANGE)?;
            }
            Pdu::BindTransmitterResp(r)
            | Pdu::BindReceiverResp(r)
            | Pdu::BindTransceiverResp(r) => {
                w.cstr("system_id", &r.system_id, max::SYSTEM_ID)?;
                w.tlvs(&r.tlvs)?;
            }
            Pdu::SubmitSm(sm) | Pdu::DeliverSm(sm) => {
                w.cstr("service_type", &sm.service_type, max::SERVICE_TYPE)?;
                w.u8(sm.source_addr_ton);
                w.u8(sm.source_addr_npi);
                w.cstr("source_addr", &sm.source_addr, max::ADDR)?;
                w.u8(sm.dest_addr_ton);
                w.u8(sm.dest_addr_npi);
                w.cstr("destination_addr", &sm.destination_addr, max::ADDR)?;
                w.u8(sm.esm_class);
                w.u8(sm.protocol_id);
                w.u8(sm.priority_flag);
                w.cstr(
                    "schedule_delivery_time",
                    &sm.schedule_delivery_time,
                    max::TIME,
                )?;
                w.cstr("validity_period", &sm.validity_period, max::TIME)?;
                w.u8(sm.registered_delivery);
                w.u8(sm.replace_if_present_flag);
                w.u8(sm.data_coding);
                w.u8(sm.sm_default_msg_id);
                let sm_length =
                    u8::try_from(sm.short_message.len()).map_err(|_| EncodeError::TooLong {
                        field: "short_message",
                        len: sm.short_message.len(),
                        max: 255,
                    })?;
                w.u8(sm_length);
                w.buf.extend_from_slice(&sm.short_message);
                w.tlvs(&sm.tlvs)?;
            }
            Pdu::SubmitSmResp(r) | Pdu::DeliverSmResp(r) => {
                w.cstr("message_id", &r.message_id, max::MESSAGE_ID)?;
            }
            Pdu::EnquireLink
            | Pdu::EnquireLinkResp
            | Pdu::Unbind
            | Pdu::UnbindResp
            | Pdu::GenericNack => {}
            Pdu::Other { body, .. } => w.buf.extend_from_slice(body),
        }
        let len = w.buf.len();
        if len > MAX_PDU_LEN {
            return Err(EncodeError::PduTooLarge(len));
        }
        let len32 = u32::try_from(len).map_err(|_| EncodeError::PduTooLarge(len))?;
        w.buf[..4].copy_from_slice(&len32.to_be_bytes());
        Ok(w.buf)
    }

    /// Decode one whole PDU. `frame` must be exactly `command_length` bytes.
    pub fn decode(frame: &[u8]) -> Result<Packet, DecodeError> {
        let header = Header::parse(frame)?;
        if header.command_length as usize != frame.len() {
            return Err(DecodeError::LengthMismatch {
                declared: header.command_length,
                actual: frame.len(),
            });
        }
        let body = &frame[HEADER_LEN..];
        let pdu = decode_body(&header, body)?;
        Ok(Packet {
            command_status: header.command_status,
            sequence_number: header.sequence_number,
            pdu,
        })
    }
}

fn decode_bind(r: &mut Reader<'_>) -> Result<Bind, DecodeError> {
    Ok(Bind {
        system_id: r.cstr("system_id", max::SYSTEM_ID)?,
        password: r.cstr("password", max::PASSWORD)?,
        system_type: r.cstr("system_type", max::SYSTEM_TYPE)?,
        interface_version: r.u8("interface_version")?,
        addr_ton: r.u8("addr_ton")?,
        addr_npi: r.u8("addr_npi")?,
        address_range: r.cstr("address_range", max::ADDRESS_RANGE)?,
    })
}

fn decode_bind_resp(r: &mut Reader<'_>) -> Result<BindResp, DecodeError> {
    // Error responses may omit the body.
    if r.remaining() == 0 {
        return Ok(BindResp::default());
    }
    Ok(BindResp {
        system_id: r.cstr("system_id", max::SYSTEM_ID)?,
        tlvs: r.tlvs()?,
    })
}

fn decode_sm(r: &mut Reader<'_>) -> Result<Sm, DecodeError> {
    let service_type = r.cstr("service_type", max::SERVICE_TYPE)?;
    let source_addr_ton = r.u8("source_addr_ton")?;
    let source_addr_npi = r.u8("source_addr_npi")?;
    let source_addr = r.cstr("source_addr", max::DECODE_ADDR_MAX)?;
    let dest_addr_ton = r.u8("dest_addr_ton")?;
    let dest_addr_npi = r.u8("dest_addr_npi")?;
    let destination_addr = r.cstr("destination_addr", max::DECODE_ADDR_MAX)?;
    let esm_class = r.u8("esm_class")?;
    let protocol_id = r.u8("protocol_id")?;
    let priority_flag = r.u8("priority_flag")?;
    let schedule_delivery_time = r.cstr("schedule_delivery_time", max::TIME)?;
    let validity_period = r.cstr("validity_period", max::TIME)?;
    let registered_delivery = r.u8("registered_delivery")?;
    let replace_if_present_flag = r.u8("replace_if_present_flag")?;
    let data_coding = r.u8("data_coding")?;
    let sm_default_msg_id = r.u8("sm_default_msg_id")?;
    let sm_length = r.u8("sm_length")?;
    let short_message = r.take(usize::from(sm_length), "short_message")?.to_vec();
    let tlvs = r.tlvs()?;
    Ok(Sm {
        service_type,
        source_addr_ton,
        source_addr_npi,
        source_addr,
        dest_addr_ton,
        dest_addr_npi,
        destination_addr,
        esm_class,
        protocol_id,
        priority_flag,
        schedule_delivery_time,
        validity_period,
        registered_delivery,
        replace_if_present_flag,
        data_coding,
        sm_default_msg_id,
        short_message,
        tlvs,
    })
}

fn decode_sm_resp(r: &mut Reader<'_>) -> Result<SmResp, DecodeError> {
    // Error responses (and some SMSCs' deliver_sm_resp) omit the body; SMPP 5.0 SMSCs may
    // append TLVs, which are ignored.
    if r.remaining() == 0 {
        return Ok(SmResp::default());
    }
    Ok(SmResp {
        message_id: r.cstr("message_id", max::MESSAGE_ID)?,
    })
}

fn decode_body(header: &Header, body: &[u8]) -> Result<Pdu, DecodeError> {
    use command_id as c;
    let mut r = Reader::new(body);
    Ok(match header.command_id {
        c::BIND_TRANSMITTER => Pdu::BindTransmitter(decode_bind(&mut r)?),
        c::BIND_RECEIVER => Pdu::BindReceiver(decode_bind(&mut r)?),
        c::BIND_TRANSCEIVER => Pdu::BindTransceiver(decode_bind(&mut r)?),
        c::BIND_TRANSMITTER_RESP => Pdu::BindTransmitterResp(decode_bind_resp(&mut r)?),
        c::BIND_RECEIVER_RESP => Pdu::BindReceiverResp(decode_bind_resp(&mut r)?),
        c::BIND_TRANSCEIVER_RESP => Pdu::BindTransceiverResp(decode_bind_resp(&mut r)?),
        c::SUBMIT_SM => Pdu::SubmitSm(Box::new(decode_sm(&mut r)?)),
        c::DELIVER_SM => Pdu::DeliverSm(Box::new(decode_sm(&mut r)?)),
        c::SUBMIT_SM_RESP => Pdu::SubmitSmResp(decode_sm_resp(&mut r)?),
        c::DELIVER_SM_RESP => Pdu::DeliverSmResp(decode_sm_resp(&mut r)?),
        // Bodiless PDUs: stray bytes are tolerated.
        c::ENQUIRE_LINK => Pdu::EnquireLink,
        c::ENQUIRE_LINK_RESP => Pdu::EnquireLinkResp,
        c::UNBIND => Pdu::Unbind,
        c::UNBIND_RESP => Pdu::UnbindResp,
        c::GENERIC_NACK => Pdu::GenericNack,
        other => Pdu::Other {
            command_id: other,
            body: body.to_vec(),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample_sm() -> Sm {
        Sm {
            service_type: "".into(),
            source_addr_ton: 1,
            source_addr_npi: 1,
            source_addr: "14155550199".into(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: "14155550100".into(),
            esm_class: 0x40,
            registered_delivery: 1,
            data_coding: 8,
            short_message: vec![5, 0, 3, 1, 2, 1, 0, 0x41],
            tlvs: vec![Tlv::u8(tag::MESSAGE_STATE, 2)],
            ..Default::default()
        }
    }

    #[test]
    fn submit_sm_round_trip_and_layout() {
        let p = Packet::new(7, Pdu::SubmitSm(Box::new(sample_sm())));
        let bytes = p.encode().unwrap();
        assert_eq!(
            u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize,
            bytes.len()
        );
        assert_eq!(&bytes[4..8], &[0, 0, 0, 4]);
        assert_eq!(&bytes[12..16], &[0, 0, 0, 7]);
        assert_eq!(Packet::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn enquire_link_is_sixteen_bytes() {
        let b = Packet::new(1, Pdu::EnquireLink).encode().unwrap();
        assert_eq!(b, vec![0, 0, 0, 16, 0, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn error_resp_without_body() {
        let mut b = vec![0, 0, 0, 16, 0x80, 0, 0, 4, 0, 0, 0, 0x58, 0, 0, 0, 9];
        let p = Packet::decode(&b).unwrap();
        assert_eq!(p.command_status, status::ESME_RTHROTTLED);
        assert_eq!(p.pdu, Pdu::SubmitSmResp(SmResp::default()));
        b[3] = 17;
        assert!(matches!(
            Packet::decode(&b),
            Err(DecodeError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn hostile_lengths() {
        assert!(matches!(
            Header::parse(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::LengthTooSmall(3))
        ));
        assert!(matches!(
            frame_len(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::LengthTooLarge(_))
        ));
        assert_eq!(frame_len(&[0, 0]), Ok(None));
    }

    #[test]
    fn unterminated_and_overrun() {
        // submit_sm_resp whose message_id has no NUL
        let mut b = vec![0, 0, 0, 0, 0x80, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1];
        b.extend_from_slice(b"abc");
        let len = b.len() as u8;
        b[3] = len;
        assert!(matches!(
            Packet::decode(&b),
            Err(DecodeError::Truncated { .. })
        ));
        // a TLV claiming more than is there
        let mut sm = sample_sm();
        sm.tlvs.clear();
        let mut bytes = Packet::new(1, Pdu::DeliverSm(Box::new(sm)))
            .encode()
            .unwrap();
        bytes.extend_from_slice(&[0x04, 0x27, 0x00, 0x09, 1]);
        let len = bytes.len() as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            Packet::decode(&bytes),
            Err(DecodeError::TlvOverrun { .. })
        ));
    }

    #[test]
    fn tlv_accessors() {
        let sm = Sm {
            tlvs: vec![
                Tlv::cstring(tag::RECEIPTED_MESSAGE_ID, "abc123"),
                Tlv::u8(tag::MESSAGE_STATE, 5),
                Tlv {
                    tag: tag::NETWORK_ERROR_CODE,
                    value: vec![3, 0, 1],
                },
                Tlv::u16(tag::SAR_MSG_REF_NUM, 0x1234),
                Tlv::u8(tag::SAR_TOTAL_SEGMENTS, 3),
                Tlv::u8(tag::SAR_SEGMENT_SEQNUM, 2),
                Tlv {
                    tag: tag::MESSAGE_PAYLOAD,
                    value: b"hi".to_vec(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(sm.receipted_message_id().as_deref(), Some("abc123"));
        assert_eq!(sm.message_state(), Some(5));
        assert_eq!(sm.network_error_code(), Some((3, 1)));
        assert_eq!(sm.sar_msg_ref_num(), Some(0x1234));
        assert_eq!(sm.sar_total_segments(), Some(3));
        assert_eq!(sm.sar_segment_seqnum(), Some(2));
        assert_eq!(sm.content(), b"hi");
    }

    #[test]
    fn classification() {
        assert_eq!(classify_status(0), StatusClass::Ok);
        for s in [
            status::ESME_RTHROTTLED,
            status::ESME_RMSGQFUL,
            status::ESME_RSYSERR,
            status::ESME_RX_T_APPN,
        ] {
            assert_eq!(classify_status(s), StatusClass::Transient, "{s:#x}");
        }
        for s in [
            status::ESME_RINVDSTADR,
            status::ESME_RINVSRCADR,
            status::ESME_RX_P_APPN,
            0x400,
        ] {
            assert_eq!(classify_status(s), StatusClass::Permanent, "{s:#x}");
        }
        assert_eq!(status::code(0x0B), "0x0000000B");
        assert_eq!(
            status::describe(0x58),
            "ESME_RTHROTTLED (0x00000058)".to_string()
        );
    }

    #[test]
    fn password_never_in_debug() {
        let b = Bind {
            system_id: "haven".into(),
            password: "SECRETPW".into(),
            system_type: String::new(),
            interface_version: INTERFACE_VERSION,
            addr_ton: 0,
            addr_npi: 0,
            address_range: String::new(),
        };
        assert!(!format!("{:?}", Pdu::BindTransceiver(b)).contains("SECRETPW"));
        let sm = sample_sm();
        assert!(!format!("{sm:?}").contains("4155550100"));
    }

    #[test]
    fn encode_limits() {
        let mut sm = sample_sm();
        sm.destination_addr = "1".repeat(21);
        assert!(matches!(
            Packet::new(1, Pdu::SubmitSm(Box::new(sm.clone()))).encode(),
            Err(EncodeError::TooLong { .. })
        ));
        sm.destination_addr = "€".into();
        assert!(matches!(
            Packet::new(1, Pdu::SubmitSm(Box::new(sm))).encode(),
            Err(EncodeError::BadChar { .. })
        ));
    }
}

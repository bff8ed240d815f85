//! One SMPP session on one transport: framing, the writer task, request/response correlation
//! by sequence number, and the bind handshake. [`crate::client`] drives sessions (reconnects,
//! enquire_link, inbound handling).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch};

use crate::pdu::{
    self, Bind, BindType, DecodeError, EncodeError, Header, INTERFACE_VERSION, Packet, Pdu,
    StatusClass, status,
};

/// A byte stream an SMPP session runs over (TCP or TLS over TCP).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// Why one request on a session did not get a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No bound session to send on.
    #[error("not bound")]
    NotBound,
    /// Waited too long (for a window slot, the throughput limit, or the response).
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection went away before the response came.
    #[error("connection lost before the response")]
    ConnectionLost,
    /// The SMSC answered with a non-zero `command_status`.
    #[error("SMSC answered {}", status::describe(*.0))]
    Status(u32),
    /// The PDU could not be encoded (a field too long, a bad character).
    #[error("cannot encode the PDU: {0}")]
    Encode(#[from] EncodeError),
    /// The SMSC answered something that makes no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl RequestError {
    /// Whether trying again (later, or on another route) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Status(s) => classify_or_transient(*s),
            RequestError::Encode(_) => false,
            _ => true,
        }
    }
}

fn classify_or_transient(s: u32) -> bool {
    !matches!(pdu::classify_status(s), StatusClass::Permanent)
}

/// Reads whole PDUs from a stream. `next` is cancel-safe (it only ever awaits `read_buf`), so
/// it can sit in a `select!`.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

/// Why the stream of PDUs ended or broke.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("unframeable PDU: {0}")]
    Frame(#[from] DecodeError),
    #[error("connection closed mid-PDU")]
    Truncated,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap a reader.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// The next whole PDU (`command_length` bytes), `Ok(None)` on a clean EOF between PDUs.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(len) = pdu::frame_len(&self.buf)? {
                if self.buf.len() >= len {
                    let frame = self.buf.split_to(len).to_vec();
                    return Ok(Some(frame));
                }
                self.buf.reserve(len - self.buf.len());
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    self.buf.advance(self.buf.len());
                    Err(ReadError::Truncated)
                };
            }
        }
    }
}

type Reply = oneshot::Sender<Result<Packet, RequestError>>;

struct PendingState {
    map: HashMap<u32, Reply>,
    closed: bool,
}

/// A live session's shared half: sequence numbers, outstanding requests, the writer queue.
pub struct Connection {
    route: String,
    bind: BindType,
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<PendingState>,
    seq: AtomicU32,
    closed_tx: watch::Sender<bool>,
}

/// Removes a pending entry if the request future is dropped or times out.
struct PendingGuard<'a> {
    conn: &'a Connection,
    seq: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.lock_pending().map.remove(&self.seq);
    }
}

impl Connection {
    /// Create a connection and spawn its writer task on `writer`.
    pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(
        route: String,
        bind: BindType,
        writer: W,
    ) -> (Arc<Connection>, tokio::task::JoinHandle<()>) {
        let (out, rx) = mpsc::channel(1024);
        let (closed_tx, _) = watch::channel(false);
        let conn = Arc::new(Connection {
            route,
            bind,
            out,
            pending: Mutex::new(PendingState {
                map: HashMap::new(),
                closed: false,
            }),
            seq: AtomicU32::new(0),
            closed_tx,
        });
        // The writer holds only a weak reference: when every handle to the connection is gone
        // (say a bind abandoned mid-way), the queue's sender drops and the writer ends.
        let handle = tokio::spawn(write_loop(
            Arc::downgrade(&conn),
            conn.closed_watch(),
            conn.route.clone(),
            rx,
            writer,
        ));
        (conn, handle)
    }

    fn lock_pending(&self) -> MutexGuard<'_, PendingState> {
        // A poisoned lock only means another task panicked while holding it; the map is still
        // consistent enough to fail requests from.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bind type of this session.
    pub fn bind_type(&self) -> BindType {
        self.bind
    }

    /// The next sequence number (1..=0x7FFFFFFF, wrapping).
    pub fn next_seq(&self) -> u32 {
        loop {
            let cur = self.seq.load(Ordering::Relaxed);
            let next = if cur >= 0x7FFF_FFFF { 1 } else { cur + 1 };
            if self
                .seq
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return next;
            }
        }
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        *self.closed_tx.borrow()
    }

    /// A receiver that turns `true` when the session closes.
    pub fn closed_watch(&self) -> watch::Receiver<bool> {
        self.closed_tx.subscribe()
    }

    /// Outstanding requests.
    pub fn pending_len(&self) -> usize {
        self.lock_pending().map.len()
    }

    /// Close: outstanding requests fail with [`RequestError::ConnectionLost`], the writer stops.
    pub fn close(&self) {
        let drained: Vec<Reply> = {
            let mut p = self.lock_pending();
            p.closed = true;
            p.map.drain().map(|(_, r)| r).collect()
        };
        for r in drained {
            let _ = r.send(Err(RequestError::ConnectionLost));
        }
        self.closed_tx.send_replace(true);
    }

    /// Queue encoded bytes for the writer.
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), RequestError> {
        if self.is_closed() {
            return Err(RequestError::ConnectionLost);
        }
        self.out
            .send(bytes)
            .await
            .map_err(|_| RequestError::ConnectionLost)
    }

    /// Send a response (or any PDU that expects no answer).
    pub async fn respond(&self, packet: Packet) -> Result<(), RequestError> {
        let bytes = packet.encode()?;
        self.send_raw(bytes).await
    }

    /// Queue a response without waiting: `false` when the session is closed or its write
    /// queue is full (the peer stopped reading), in which case the session should end.
    pub fn respond_now(&self, packet: Packet) -> bool {
        if self.is_closed() {
            return false;
        }
        match packet.encode() {
            Ok(bytes) => self.out.try_send(bytes).is_ok(),
            Err(e) => {
                tracing::warn!(route = %self.route, error = %e, "could not encode a response");
                true
            }
        }
    }

    /// Send a request and wait up to `timeout` for the response with the same sequence number.
    /// A response with a non-zero status is returned as `Ok` (the caller interprets it).
    pub async fn request(&self, pdu: Pdu, timeout: Duration) -> Result<Packet, RequestError> {
        let seq = self.next_seq();
        let bytes = Packet::new(seq, pdu).encode()?;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.lock_pending();
            if p.closed {
                return Err(RequestError::ConnectionLost);
            }
            p.map.insert(seq, tx);
        }
        let _guard = PendingGuard { conn: self, seq };
        let fut = async {
            self.send_raw(bytes).await?;
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(RequestError::ConnectionLost),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout("the SMSC's response")),
        }
    }

    /// Hand a response to whoever waits for its sequence number. `false` when nobody does.
    pub fn complete(&self, packet: Packet) -> bool {
        let waiter = self.lock_pending().map.remove(&packet.sequence_number);
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(packet));
                true
            }
            None => false,
        }
    }

    /// Fail the request waiting for `seq` (its response did not decode).
    pub fn fail(&self, seq: u32, err: RequestError) -> bool {
        let waiter = self.lock_pending().map.remove(&seq);
        match waiter {
            Some(w) => {
                let _ = w.send(Err(err));
                true
            }
            None => false,
        }
    }
}

/// Resolve once the watched flag is `true` (or its sender is gone).
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    loop {
        let v = *rx.borrow_and_update();
        if v || rx.changed().await.is_err() {
            return;
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    conn: Weak<Connection>,
    mut closed: watch::Receiver<bool>,
    route: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    writer: W,
) {
    let mut w = BufWriter::with_capacity(16 * 1024, writer);
    loop {
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = until_true(&mut closed) => None,
        };
        let Some(first) = first else { break };
        // Let the tasks that are ready to run go first: under load they are sends and receipt
        // answers on their way to this queue, and what they queue now goes out in this write
        // instead of the next (fewer writes here, fewer reads and wake-ups at the SMSC).
        tokio::task::yield_now().await;
        let mut result = w.write_all(&first).await;
        // Batch whatever else is queued into one flush.
        while result.is_ok() {
            match rx.try_recv() {
                Ok(more) => result = w.write_all(&more).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = w.flush().await;
        }
        if let Err(e) = result {
            tracing::warn!(route = %route, error = %e, "SMPP write failed; dropping the session");
            if let Some(conn) = conn.upgrade() {
                conn.close();
            }
            break;
        }
    }
    // Flush anything already queued (an unbind_resp, say), then close our half. Bounded so a
    // peer that stopped reading cannot hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).await.is_err() {
                return;
            }
        }
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    })
    .await;
}

/// Why a bind failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the SMSC refused the bind: {}", status::describe(*.0))]
    Refused(u32),
    #[error("no bind response within {0:?}")]
    Timeout(Duration),
    #[error("connection closed during bind")]
    Closed,
    #[error("bind read failed: {0}")]
    Read(#[from] ReadError),
    #[error("bind: {0}")]
    Request(#[from] RequestError),
    #[error("bind: unexpected {0}")]
    Unexpected(&'static str),
}

/// Credentials and identity for a bind.
pub struct BindParams<'a> {
    pub bind: BindType,
    pub system_id: &'a str,
    pub password: &'a str,
    pub system_type: &'a str,
}

/// Send a bind on `conn` and read `reader` until its response arrives (answering
/// enquire_link meanwhile). Returns the SMSC's system_id.
pub async fn bind<R: AsyncRead + Unpin>(
    conn: &Connection,
    reader: &mut FrameReader<R>,
    params: &BindParams<'_>,
    timeout: Duration,
) -> Result<String, BindError> {
    let body = Bind {
        system_id: params.system_id.to_string(),
        password: params.password.to_string(),
        system_type: params.system_type.to_string(),
        interface_version: INTERFACE_VERSION,
        addr_ton: 0,
        addr_npi: 0,
        address_range: String::new(),
    };
    let pdu = match params.bind {
        BindType::Transmitter => Pdu::BindTransmitter(body),
        BindType::Receiver => Pdu::BindReceiver(body),
        BindType::Transceiver => Pdu::BindTransceiver(body),
    };
    let seq = conn.next_seq();
    conn.respond(Packet::new(seq, pdu)).await?;
    let wait = async {
        loop {
            let Some(frame) = reader.next().await? else {
                return Err(BindError::Closed);
            };
            let header = Header::parse(&frame).map_err(ReadError::Frame)?;
            let packet = match Packet::decode(&frame) {
                Ok(p) => p,
                Err(e) if header.sequence_number == seq && header.is_response() => {
                    // A bind_resp we cannot read: go by its status alone.
                    if header.command_status != status::ESME_ROK {
                        return Err(BindError::Refused(header.command_status));
                    }
                    return Err(BindError::Read(ReadError::Frame(e)));
                }
                Err(_) => continue,
            };
            match packet.pdu {
                Pdu::BindTransceiverResp(r)
                | Pdu::BindTransmitterResp(r)
                | Pdu::BindReceiverResp(r)
                    if packet.sequence_number == seq =>
                {
                    if packet.command_status != status::ESME_ROK {
                        return Err(BindError::Refused(packet.command_status));
                    }
                    return Ok(r.system_id);
                }
                Pdu::GenericNack if packet.sequence_number == seq => {
                    return Err(BindError::Refused(packet.command_status));
                }
                Pdu::EnquireLink => {
                    conn.respond(Packet::new(packet.sequence_number, Pdu::EnquireLinkResp))
                        .await?;
                }
                Pdu::Unbind => {
                    let _ = conn
                        .respond(Packet::new(packet.sequence_number, Pdu::UnbindResp))
                        .await;
                    return Err(BindError::Closed);
                }
                _ => {
                    if !header.is_response() {
                        // Not bound yet: refuse anything else.
                        let mut nack = Packet::new(packet.sequence_number, Pdu::GenericNack);
                        nack.command_status = status::ESME_RINVBNDSTS;
                        conn.respond(nack).await?;
                    }
                }
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(BindError::Timeout(timeout)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pdu::{BindResp, SmResp};

    #[tokio::test]
    async fn frame_reader_splits_and_rejects() {
        let a = Packet::new(1, Pdu::EnquireLink).encode().unwrap();
        let b = Packet::new(
            2,
            Pdu::SubmitSmResp(SmResp {
                message_id: "abc".into(),
            }),
        )
        .encode()
        .unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut r = FrameReader::new(&all[..]);
        assert_eq!(r.next().await.unwrap(), Some(a));
        assert_eq!(r.next().await.unwrap(), Some(b));
        assert_eq!(r.next().await.unwrap(), None);

        let huge = [0x7F, 0, 0, 0, 0, 0, 0, 0x15];
        let mut r = FrameReader::new(&huge[..]);
        assert!(matches!(r.next().await, Err(ReadError::Frame(_))));

        let cut = [0, 0, 0, 20, 0, 0];
        let mut r = FrameReader::new(&cut[..]);
        assert!(matches!(r.next().await, Err(ReadError::Truncated)));
    }

    #[tokio::test]
    async fn request_correlation_timeout_and_close() {
        let (client, mut server) = tokio::io::duplex(4096);
        let (rd, wr) = tokio::io::split(client);
        drop(rd);
        let (conn, _w) = Connection::spawn("t".into(), BindType::Transceiver, wr);

        // respond to whatever arrives with a submit_sm_resp of the same sequence
        let c2 = conn.clone();
        let responder = tokio::spawn(async move {
            let mut fr = FrameReader::new(&mut server);
            let frame = fr.next().await.unwrap().unwrap();
            let p = Packet::decode(&frame).unwrap();
            c2.complete(Packet::new(
                p.sequence_number,
                Pdu::SubmitSmResp(SmResp {
                    message_id: "m1".into(),
                }),
            ));
            // read the next one and never answer
            let _ = fr.next().await;
            server
        });
        let r = conn
            .request(Pdu::EnquireLink, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            r.pdu,
            Pdu::SubmitSmResp(SmResp {
                message_id: "m1".into()
            })
        );
        let e = conn
            .request(Pdu::EnquireLink, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e, RequestError::Timeout("the SMSC's response"));
        assert_eq!(conn.pending_len(), 0);

        let c3 = conn.clone();
        let waiting =
            tokio::spawn(async move { c3.request(Pdu::EnquireLink, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.close();
        assert_eq!(
            waiting.await.unwrap().unwrap_err(),
            RequestError::ConnectionLost
        );
        assert_eq!(
            conn.request(Pdu::EnquireLink, Duration::from_secs(1))
                .await
                .unwrap_err(),
            RequestError::ConnectionLost
        );
        let _ = responder.await;
        let _ = BindResp::default();
    }

    #[test]
    fn sequence_wraps() {
        let (_c, s) = tokio::io::duplex(16);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (conn, _w) = Connection::spawn("t".into(), BindType::Transceiver, s);
            conn.seq.store(0x7FFF_FFFE, Ordering::Relaxed);
            assert_eq!(conn.next_seq(), 0x7FFF_FFFF);
            assert_eq!(conn.next_seq(), 1);
        });
    }

    #[test]
    fn transient_classification() {
        assert!(RequestError::Timeout("x").is_transient());
        assert!(RequestError::ConnectionLost.is_transient());
        assert!(RequestError::Status(status::ESME_RTHROTTLED).is_transient());
        assert!(!RequestError::Status(status::ESME_RINVDSTADR).is_transient());
    }

    /// An inner writer that notes each write it is given.
    struct Writes(Arc<std::sync::Mutex<Vec<usize>>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// PDUs queued by tasks that became ready just after the first PDU woke the writer go out
    /// in the same write.
    #[tokio::test(flavor = "current_thread")]
    async fn pdus_queued_by_ready_tasks_share_the_first_ones_write() {
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
        let (close, closed) = watch::channel(false);
        let writer = tokio::spawn(write_loop(
            Weak::new(),
            closed,
            "test".to_owned(),
            rx,
            Writes(Arc::clone(&writes)),
        ));
        let go = Arc::new(tokio::sync::Notify::new());
        let mut senders = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (tx, go) = (tx.clone(), Arc::clone(&go));
            senders.spawn(async move {
                go.notified().await;
                tx.send(vec![7u8; 30]).await.unwrap();
            });
        }
        // The writer waits for its first PDU and every sender for the signal.
        tokio::task::yield_now().await;
        // The first PDU wakes the writer; the senders are woken after it.
        tx.send(vec![1u8; 30]).await.unwrap();
        go.notify_waiters();
        senders.join_all().await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*writes.lock().unwrap(), vec![11 * 30]);
        close.send(true).unwrap();
        writer.await.unwrap();
    }
}

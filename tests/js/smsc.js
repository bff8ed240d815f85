#!/usr/bin/env node
// SMSC simulator for Haven's SMPP tests, end-to-end tests and benchmarks, built on node-smpp
// (`smpp` on npm): a real third-party SMPP 3.4 implementation on the other end of the wire.
//
//   node tests/js/smsc.js --port P --control-port C [--system-id haven] [--password secret]
//        [--dlr-delay-ms 50] [--quiet] [--count-only] [--tls-cert cert.pem --tls-key key.pem]
//        [--record FILE]
//
// Listens on 127.0.0.1 only. Prints one JSON line {"ready":true,"port":P,"control_port":C} on
// stdout once both listeners are up (port 0 picks a free port; the real ones are printed).
// Nothing else goes to stdout. Without --quiet, one line per PDU goes to stderr; with --quiet
// nothing per PDU is written anywhere (benchmarks need the simulator's own ceiling high).
// --count-only keeps counts and nothing of the messages (GET /messages stays empty): a long
// benchmark run does not grow the simulator's heap, and its garbage collector does not take
// a growing share of the CPU from the server under test.
// --record FILE appends one JSON line per accepted submit_sm part ({message_id, to, text, part,
// parts}) synchronously, before the submit_sm_resp: a test can then prove what the SMSC took
// even after killing it with SIGKILL.
//
// SMPP behaviour:
// - bind_transceiver/transmitter/receiver with the configured credentials (else
//   ESME_RBINDFAIL and the socket is closed); enquire_link answered; unbind answered.
// - submit_sm: submit_sm_resp with a fresh message id; the message is recorded (text decoded
//   by data_coding with the UDH stripped, concatenated parts reassembled via UDH IEI 0x00/0x08
//   or sar_* TLVs). When registered_delivery asks for it, a delivery receipt (deliver_sm,
//   esm_class 0x04, standard text, receipted_message_id + message_state TLVs) follows after
//   --dlr-delay-ms for every part. Receipts refused by the ESME (non-zero deliver_sm_resp) or
//   with no bound receiver are retried every second (up to 30 tries). A receipt is delivered to
//   the session that submitted its message, else to any bound receiver; POST /reset discards
//   every receipt not yet acknowledged, so one benchmark scenario's receipts never reach the next.
// - Test rules by destination suffix: ...0666 → receipt stat UNDELIV err:001;
//   ...0777 → submit_sm_resp ESME_RINVDSTADR (0x0B); ...0888 → ESME_RTHROTTLED (0x58) for the
//   first submit of each part (same destination, coding, payload and part number), then OK.
//
// Control API (HTTP on --control-port, 127.0.0.1):
//   GET  /stats     {"binds","submits","receipts_sent","bound_sessions","messages",
//                    "receipts_pending","receipts_unanswered","receipts_retried",
//                    "receipts_given_up","receipts_discarded","mo_sent"}
//   GET  /messages  [{"message_ids","to","from","source_ton","source_npi","dest_ton","dest_npi",
//                     "text","data_coding","esm_class","registered_delivery","validity_period",
//                     "parts","at"}] (completed messages, in order)
//   POST /mo        {"from":"+1…","to":"+1…","text":"…","encoding":"gsm|ucs2" (default: gsm when
//                    representable), "concat":"udh8|udh16|sar" (default udh8)}
//                   → sends deliver_sm (split when long) to every bound receiver/transceiver and
//                   answers {"sessions":n,"statuses":[…],"results":[{"session":i,"statuses":[…]}]}
//                   with the deliver_sm_resp command_status of each part (null: no answer in 10 s)
//   POST /receipt   {"message_id":"…","to":"+1…","from":"+1…","stat":"DELIVRD"} → sends a
//                   delivery receipt for a message id this SMSC never issued (a receipt meant
//                   for another system) to every bound receiver; answers like POST /mo
//   POST /reset     clears recorded messages, partial sets, counters (except binds), queued receipts
//   POST /drop      destroys every SMPP session abruptly (to test reconnects)
// SIGTERM/SIGINT close everything and exit 0.
'use strict';

const fs = require('fs');
const http = require('http');
const smpp = require('smpp');

// ---- arguments --------------------------------------------------------------------------
function parseArgs(argv) {
  const opts = {
    port: 2775,
    controlPort: 0,
    systemId: 'haven',
    password: 'secret',
    dlrDelayMs: 50,
    quiet: false,
    countOnly: false,
    tlsCert: null,
    tlsKey: null,
    record: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--port': opts.port = toPort(next()); break;
      case '--control-port': opts.controlPort = toPort(next()); break;
      case '--system-id': opts.systemId = next(); break;
      case '--password': opts.password = next(); break;
      case '--dlr-delay-ms': opts.dlrDelayMs = Math.max(0, parseInt(next(), 10) || 0); break;
      case '--quiet': opts.quiet = true; break;
      case '--count-only': opts.countOnly = true; break;
      case '--record': opts.record = next(); break;
      case '--tls-cert': opts.tlsCert = next(); break;
      case '--tls-key': opts.tlsKey = next(); break;
      case '-h': case '--help':
        process.stderr.write('usage: node smsc.js --port P --control-port C [--system-id ID] ' +
          '[--password PW] [--dlr-delay-ms N] [--quiet] [--count-only] [--tls-cert F --tls-key F] ' +
          '[--record FILE]\n');
        process.exit(0);
        break;
      default: die(`unknown argument ${a}`);
    }
  }
  return opts;
}

function toPort(s) {
  const n = parseInt(s, 10);
  if (!(n >= 0 && n <= 65535)) die(`bad port ${s}`);
  return n;
}

function die(msg) {
  process.stderr.write(`smsc.js: ${msg}\n`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
const log = opts.quiet ? () => {} : (...a) => process.stderr.write(a.join(' ') + '\n');

// node-smpp decodes short_message/message_payload itself (and treats data_coding 0 loosely);
// take the raw bytes instead and decode them here.
const messageFilter = smpp.commands.submit_sm.params.short_message.filter;
messageFilter.decode = function (value) { return value; };
// Keep schedule_delivery_time/validity_period as the raw SMPP time strings.
smpp.commands.submit_sm.params.validity_period.filter.decode = function (value) { return value; };

// ---- status codes -----------------------------------------------------------------------
const ESME_ROK = 0x00;
const ESME_RINVBNDSTS = 0x04;
const ESME_RALYBND = 0x05;
const ESME_RINVDSTADR = 0x0B;
const ESME_RBINDFAIL = 0x0D;
const ESME_RTHROTTLED = 0x58;
const ESME_RINVCMDID = 0x03;

// ---- GSM 03.38 (unpacked) ---------------------------------------------------------------
const GSM_BASIC = '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !"#¤%&\'()*+,-./0123456789:;<=>?' +
  '¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà';
const GSM_EXT = { 0x0a: '\f', 0x14: '^', 0x28: '{', 0x29: '}', 0x2f: '\\', 0x3c: '[', 0x3d: '~', 0x3e: ']', 0x40: '|', 0x65: '€' };
const GSM_ENC = new Map();
for (let i = 0; i < GSM_BASIC.length; i++) if (i !== 0x1b) GSM_ENC.set(GSM_BASIC[i], [i]);
for (const [code, ch] of Object.entries(GSM_EXT)) GSM_ENC.set(ch, [0x1b, Number(code)]);

function gsmDecode(buf) {
  let out = '';
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i];
    if (b === 0x1b) {
      if (i + 1 >= buf.length) break;
      const c = buf[++i];
      out += GSM_EXT[c] !== undefined ? GSM_EXT[c] : (GSM_BASIC[c] || '\ufffd');
    } else {
      out += GSM_BASIC[b] || '\ufffd';
    }
  }
  return out;
}

// Array of septet arrays (one per character), or null when not representable.
function gsmChars(text) {
  const out = [];
  for (const ch of text) {
    const s = GSM_ENC.get(ch);
    if (!s) return null;
    out.push(s);
  }
  return out;
}

function gsmEncodeLossy(text) {
  const out = [];
  for (const ch of text) out.push(...(GSM_ENC.get(ch) || [0x3f]));
  return Buffer.from(out);
}

function ucs2Decode(buf) {
  const even = Buffer.from(buf.subarray(0, buf.length - (buf.length % 2)));
  return even.swap16().toString('utf16le');
}

function ucs2Encode(text) {
  return Buffer.from(text, 'utf16le').swap16();
}

function decodeText(dc, buf) {
  switch (dc) {
    case 0x00: return gsmDecode(buf);
    case 0x08: return ucs2Decode(buf);
    case 0x01: return buf.toString('latin1');
    default: return buf.toString('latin1');
  }
}

// ---- UDH --------------------------------------------------------------------------------
function splitUdh(buf) {
  if (buf.length < 1) return { concat: null, payload: buf };
  const udhl = buf[0];
  if (udhl + 1 > buf.length) return { concat: null, payload: buf };
  const udh = buf.subarray(1, 1 + udhl);
  let concat = null;
  for (let i = 0; i + 1 < udh.length;) {
    const iei = udh[i];
    const len = udh[i + 1];
    const d = udh.subarray(i + 2, i + 2 + len);
    if (d.length < len) break;
    if (iei === 0x00 && len === 3) concat = { ref: d[0], total: d[1], seq: d[2] };
    if (iei === 0x08 && len === 4) concat = { ref: d.readUInt16BE(0), total: d[2], seq: d[3] };
    i += 2 + len;
  }
  return { concat, payload: buf.subarray(1 + udhl) };
}

// ---- state ------------------------------------------------------------------------------
const state = {
  binds: 0,
  submits: 0,
  receiptsSent: 0,
  moSent: 0,
  nextId: 1,
  messages: [],
  partial: new Map(), // key → {parts: [], meta}
  throttledOnce: new Set(),
  receiptQueue: [], // receipts waiting for a bound receiver
  receiptsUnanswered: 0, // deliver_sm receipts sent, no deliver_sm_resp yet
  receiptsRetried: 0,
  receiptsGivenUp: 0,
  receiptsDiscarded: 0, // of an earlier generation, dropped by POST /reset
  generation: 0,
};
const sessions = new Set(); // all live sessions

function boundReceivers() {
  return [...sessions].filter((s) => s.bound && s.bindType !== 'transmitter');
}

function newMessageId() {
  return (state.nextId++).toString(16).toUpperCase().padStart(10, '0');
}

function smppDate(d) {
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
    p(d.getUTCHours()) + p(d.getUTCMinutes());
}

// ---- receipts ---------------------------------------------------------------------------
function scheduleReceipt(session, part) {
  const failed = part.dest.endsWith('0666');
  const rd = part.registeredDelivery & 0x03;
  if (rd === 0 || (rd === 2 && !failed)) return;
  const receipt = {
    session,
    attempts: 0,
    generation: state.generation,
    pdu: receiptPdu(part, failed),
  };
  setTimeout(() => deliverReceipt(receipt), opts.dlrDelayMs);
}

// The deliver_sm of a receipt for `part` (a submitted part, or what POST /receipt names).
function receiptPdu(part, failed) {
  const stat = failed ? 'UNDELIV' : 'DELIVRD';
  const err = failed ? '001' : '000';
  const text = `id:${part.messageId} sub:001 dlvrd:${failed ? '000' : '001'} ` +
    `submit date:${smppDate(part.at)} done date:${smppDate(new Date())} stat:${stat} err:${err} ` +
    `text:${part.sample.slice(0, 20)}`;
  return {
    source_addr_ton: part.destTon,
    source_addr_npi: part.destNpi,
    source_addr: part.dest,
    dest_addr_ton: part.sourceTon,
    dest_addr_npi: part.sourceNpi,
    destination_addr: part.source,
    esm_class: 0x04,
    data_coding: 0x00,
    short_message: gsmEncodeLossy(text),
    receipted_message_id: part.messageId,
    message_state: failed ? 5 : 2,
  };
}

function deliverReceipt(receipt) {
  if (receipt.generation !== state.generation) {
    state.receiptsDiscarded++;
    return;
  }
  let target = receipt.session;
  if (!target || !target.bound || target.bindType === 'transmitter' || !sessions.has(target)) {
    target = boundReceivers()[0];
  }
  if (!target) {
    state.receiptQueue.push(receipt);
    return;
  }
  receipt.attempts++;
  let answered = false;
  state.receiptsUnanswered++;
  const settle = () => { answered = true; state.receiptsUnanswered--; };
  // No answer (the session died mid-way): try again, like an SMSC would.
  const timer = setTimeout(() => { if (!answered) { settle(); retryReceipt(receipt); } }, 10000);
  const sent = target.deliver_sm(Object.assign({}, receipt.pdu), (resp) => {
    if (answered) return;
    settle();
    clearTimeout(timer);
    if (resp.command_status === ESME_ROK) {
      state.receiptsSent++;
      log('receipt acked', receipt.pdu.receipted_message_id);
    } else {
      log('receipt refused', receipt.pdu.receipted_message_id, resp.command_status);
      retryReceipt(receipt);
    }
  });
  if (!sent && !answered) {
    settle();
    clearTimeout(timer);
    retryReceipt(receipt);
  }
}

function retryReceipt(receipt) {
  if (receipt.attempts >= 30) {
    state.receiptsGivenUp++;
    return;
  }
  state.receiptsRetried++;
  receipt.session = null;
  setTimeout(() => deliverReceipt(receipt), 1000);
}

function flushReceiptQueue() {
  const q = state.receiptQueue;
  state.receiptQueue = [];
  for (const r of q) deliverReceipt(r);
}

// ---- submit_sm --------------------------------------------------------------------------
function recordPart(part) {
  const c = part.concat;
  if (!c || c.total <= 1) {
    finishMessage([part]);
    return;
  }
  const key = [part.source, part.dest, c.ref, c.total].join('|');
  let set = state.partial.get(key);
  if (!set) {
    set = { parts: new Array(c.total).fill(null), at: Date.now() };
    state.partial.set(key, set);
  }
  if (c.seq >= 1 && c.seq <= c.total) set.parts[c.seq - 1] = part;
  if (set.parts.every((p) => p)) {
    state.partial.delete(key);
    finishMessage(set.parts);
  }
}

function finishMessage(parts) {
  const first = parts[0];
  const sameDc = parts.every((p) => p.dataCoding === first.dataCoding);
  const text = sameDc
    ? decodeText(first.dataCoding, Buffer.concat(parts.map((p) => p.payload)))
    : parts.map((p) => decodeText(p.dataCoding, p.payload)).join('');
  state.messages.push({
    message_ids: parts.map((p) => p.messageId),
    to: first.dest,
    from: first.source,
    source_ton: first.sourceTon,
    source_npi: first.sourceNpi,
    dest_ton: first.destTon,
    dest_npi: first.destNpi,
    text,
    data_coding: first.dataCoding,
    esm_class: first.esmClass,
    registered_delivery: first.registeredDelivery,
    validity_period: first.validityPeriod,
    parts: parts.length,
    at: first.at.toISOString(),
  });
}

function onSubmit(session, pdu) {
  if (!session.bound || session.bindType === 'receiver') {
    session.send(pdu.response({ command_status: ESME_RINVBNDSTS }));
    return;
  }
  state.submits++;
  const dest = String(pdu.destination_addr || '');
  const raw = Buffer.isBuffer(pdu.short_message) && pdu.short_message.length
    ? pdu.short_message
    : (Buffer.isBuffer(pdu.message_payload) ? pdu.message_payload : Buffer.alloc(0));
  const esm = pdu.esm_class || 0;
  const dc = pdu.data_coding || 0;
  let concat = null;
  let payload = raw;
  if (esm & 0x40) {
    const u = splitUdh(raw);
    concat = u.concat;
    payload = u.payload;
  } else if (pdu.sar_msg_ref_num !== undefined && pdu.sar_total_segments !== undefined &&
             pdu.sar_segment_seqnum !== undefined) {
    concat = { ref: pdu.sar_msg_ref_num, total: pdu.sar_total_segments, seq: pdu.sar_segment_seqnum };
  }

  if (dest.endsWith('0777')) {
    log('submit_sm', pdu.sequence_number, '→ ESME_RINVDSTADR');
    session.send(pdu.response({ command_status: ESME_RINVDSTADR }));
    return;
  }
  if (dest.endsWith('0888')) {
    const key = [dest, dc, payload.toString('hex'), concat ? concat.seq : 1].join('|');
    if (!state.throttledOnce.has(key)) {
      state.throttledOnce.add(key);
      log('submit_sm', pdu.sequence_number, '→ ESME_RTHROTTLED');
      session.send(pdu.response({ command_status: ESME_RTHROTTLED }));
      return;
    }
  }
  const messageId = newMessageId();
  if (opts.record) {
    // Written before the answer: what the SMSC took is known even if it is killed next.
    fs.appendFileSync(opts.record, JSON.stringify({
      message_id: messageId, to: dest, text: decodeText(dc, payload),
      part: concat ? concat.seq : 1, parts: concat ? concat.total : 1,
    }) + '\n');
  }
  session.send(pdu.response({ message_id: messageId }));
  log('submit_sm', pdu.sequence_number, '→', messageId);
  const part = {
    messageId,
    dest,
    source: String(pdu.source_addr || ''),
    sourceTon: pdu.source_addr_ton || 0,
    sourceNpi: pdu.source_addr_npi || 0,
    destTon: pdu.dest_addr_ton || 0,
    destNpi: pdu.dest_addr_npi || 0,
    esmClass: esm,
    dataCoding: dc,
    registeredDelivery: pdu.registered_delivery || 0,
    validityPeriod: String(pdu.validity_period || ''),
    concat,
    payload: Buffer.from(payload),
    sample: decodeText(dc, payload),
    at: new Date(),
  };
  if (!opts.countOnly) recordPart(part);
  scheduleReceipt(session, part);
}

const HANDLED = new Set(['bind_transceiver', 'bind_transmitter', 'bind_receiver', 'enquire_link',
  'unbind', 'submit_sm']);

// ---- sessions ---------------------------------------------------------------------------
function onSession(session) {
  sessions.add(session);
  session.bound = false;
  session.bindType = null;
  session.on('error', (e) => log('session error', e && e.message));
  session.on('close', () => {
    sessions.delete(session);
    session.bound = false;
  });
  const onBind = (type) => (pdu) => {
    if (session.bound) {
      session.send(pdu.response({ command_status: ESME_RALYBND }));
      return;
    }
    if (pdu.system_id !== opts.systemId || pdu.password !== opts.password) {
      log('bind refused for', pdu.system_id);
      session.send(pdu.response({ command_status: ESME_RBINDFAIL }), () => session.close());
      return;
    }
    session.bound = true;
    session.bindType = type;
    state.binds++;
    log('bound', type, pdu.system_id);
    session.send(pdu.response({ system_id: 'haven-sim' }));
    if (type !== 'transmitter') setImmediate(flushReceiptQueue);
  };
  session.on('bind_transceiver', onBind('transceiver'));
  session.on('bind_transmitter', onBind('transmitter'));
  session.on('bind_receiver', onBind('receiver'));
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    session.bound = false;
    session.send(pdu.response(), () => session.close());
  });
  session.on('submit_sm', (pdu) => onSubmit(session, pdu));
  session.on('unknown', (pdu) => session.send(pdu.response({ command_status: ESME_RINVCMDID })));
  session.on('pdu', (pdu) => {
    log('pdu', pdu.command, pdu.sequence_number, pdu.command_status);
    // Requests this simulator does not serve (query_sm, data_sm, …) get an error response.
    if (!pdu.isResponse() && !HANDLED.has(pdu.command) && pdu.command !== 'unknown') {
      session.send(pdu.response({ command_status: ESME_RINVCMDID }));
    }
  });
}

// ---- MO ---------------------------------------------------------------------------------
function splitMo(text, encoding, concatMode) {
  let dc;
  let parts;
  const gsm = encoding === 'ucs2' ? null : gsmChars(text);
  if (encoding === 'gsm' && !gsm) throw new Error('text not representable in GSM 03.38');
  if (gsm) {
    dc = 0x00;
    const total = gsm.reduce((n, c) => n + c.length, 0);
    const limit = total <= 160 ? 160 : 153;
    parts = [];
    let cur = [];
    for (const c of gsm) {
      if (cur.length + c.length > limit) { parts.push(cur); cur = []; }
      cur.push(...c);
    }
    parts.push(cur);
    parts = parts.map((p) => Buffer.from(p));
  } else {
    dc = 0x08;
    const units = [...text];
    const total = units.reduce((n, ch) => n + ch.length, 0);
    const limit = total <= 70 ? 70 : 67;
    parts = [];
    let cur = '';
    for (const ch of units) {
      if (cur.length + ch.length > limit) { parts.push(cur); cur = ''; }
      cur += ch;
    }
    parts.push(cur);
    parts = parts.map(ucs2Encode);
  }
  const ref = Math.floor(Math.random() * 256);
  const ref16 = Math.floor(Math.random() * 65536);
  return parts.map((payload, i) => {
    const pdu = { data_coding: dc, esm_class: 0, short_message: payload };
    if (parts.length > 1) {
      if (concatMode === 'sar') {
        pdu.sar_msg_ref_num = ref16;
        pdu.sar_total_segments = parts.length;
        pdu.sar_segment_seqnum = i + 1;
      } else if (concatMode === 'udh16') {
        pdu.esm_class = 0x40;
        pdu.short_message = Buffer.concat([
          Buffer.from([6, 8, 4, ref16 >> 8, ref16 & 0xff, parts.length, i + 1]), payload]);
      } else {
        pdu.esm_class = 0x40;
        pdu.short_message = Buffer.concat([Buffer.from([5, 0, 3, ref, parts.length, i + 1]), payload]);
      }
    }
    return pdu;
  });
}

function addrFields(prefix, addr) {
  const s = String(addr || '');
  if (/^\+?\d+$/.test(s)) {
    return { [`${prefix}_ton`]: 1, [`${prefix}_npi`]: 1, digits: s.replace(/^\+/, '') };
  }
  return { [`${prefix}_ton`]: 5, [`${prefix}_npi`]: 0, digits: s };
}

function sendMo(body) {
  const targets = boundReceivers();
  const pdus = splitMo(String(body.text || ''), body.encoding, body.concat);
  const src = addrFields('source_addr', body.from);
  const dst = addrFields('dest_addr', body.to);
  const perSession = targets.map((session, si) => Promise.all(pdus.map((p) => new Promise((resolve) => {
    const pdu = Object.assign({
      source_addr_ton: src.source_addr_ton,
      source_addr_npi: src.source_addr_npi,
      source_addr: src.digits,
      dest_addr_ton: dst.dest_addr_ton,
      dest_addr_npi: dst.dest_addr_npi,
      destination_addr: dst.digits,
    }, p);
    let done = false;
    const timer = setTimeout(() => { done = true; resolve(null); }, 10000);
    const sent = session.deliver_sm(pdu, (resp) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(resp.command_status);
    });
    if (!sent) { clearTimeout(timer); resolve(null); }
    state.moSent++;
  }))).then((statuses) => ({ session: si, statuses })));
  return Promise.all(perSession).then((results) => ({
    sessions: targets.length,
    statuses: results.flatMap((r) => r.statuses),
    results,
  }));
}

// A receipt for a message id this SMSC never issued, to every bound receiver, once.
function sendForeignReceipt(body) {
  const messageId = String(body.message_id || '');
  if (!messageId) throw new Error('message_id is required');
  const src = addrFields('source_addr', body.from || '+14155550100');
  const dst = addrFields('dest_addr', body.to || '+14155550199');
  const pdu = receiptPdu({
    messageId,
    dest: src.digits,
    destTon: src.source_addr_ton,
    destNpi: src.source_addr_npi,
    source: dst.digits,
    sourceTon: dst.dest_addr_ton,
    sourceNpi: dst.dest_addr_npi,
    at: new Date(),
    sample: '',
  }, body.stat === 'UNDELIV');
  const targets = boundReceivers();
  return Promise.all(targets.map((session) => new Promise((resolve) => {
    let done = false;
    const timer = setTimeout(() => { done = true; resolve(null); }, 10000);
    const sent = session.deliver_sm(Object.assign({}, pdu), (resp) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(resp.command_status);
    });
    if (!sent) { clearTimeout(timer); resolve(null); }
  }))).then((statuses) => ({ sessions: targets.length, statuses }));
}

// ---- control API ------------------------------------------------------------------------
function json(res, code, value) {
  const body = JSON.stringify(value);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 1 << 20) { reject(new Error('body too large')); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function stats() {
  return {
    binds: state.binds,
    submits: state.submits,
    receipts_sent: state.receiptsSent,
    bound_sessions: [...sessions].filter((s) => s.bound).length,
    messages: state.messages.length,
    receipts_pending: state.receiptQueue.length,
    receipts_unanswered: state.receiptsUnanswered,
    receipts_retried: state.receiptsRetried,
    receipts_given_up: state.receiptsGivenUp,
    receipts_discarded: state.receiptsDiscarded,
    mo_sent: state.moSent,
  };
}

async function control(req, res) {
  const url = req.url.split('?')[0];
  try {
    if (req.method === 'GET' && url === '/stats') return json(res, 200, stats());
    if (req.method === 'GET' && url === '/messages') return json(res, 200, state.messages);
    if (req.method === 'GET' && url === '/health') return json(res, 200, { ok: true });
    if (req.method === 'POST' && url === '/mo') {
      const raw = await readBody(req);
      let body;
      try { body = JSON.parse(raw || '{}'); } catch (e) { return json(res, 400, { error: 'invalid JSON' }); }
      if (boundReceivers().length === 0) return json(res, 409, { error: 'no bound receiver session' });
      let result;
      try { result = await sendMo(body); } catch (e) { return json(res, 400, { error: e.message }); }
      return json(res, 200, result);
    }
    if (req.method === 'POST' && url === '/receipt') {
      const raw = await readBody(req);
      let body;
      try { body = JSON.parse(raw || '{}'); } catch (e) { return json(res, 400, { error: 'invalid JSON' }); }
      if (boundReceivers().length === 0) return json(res, 409, { error: 'no bound receiver session' });
      let result;
      try { result = await sendForeignReceipt(body); } catch (e) { return json(res, 400, { error: e.message }); }
      return json(res, 200, result);
    }
    if (req.method === 'POST' && url === '/reset') {
      await readBody(req);
      state.submits = 0;
      state.receiptsSent = 0;
      state.moSent = 0;
      state.messages = [];
      state.partial.clear();
      state.throttledOnce.clear();
      state.receiptQueue = [];
      state.generation++;
      return json(res, 200, { ok: true });
    }
    if (req.method === 'POST' && url === '/drop') {
      await readBody(req);
      const n = sessions.size;
      for (const s of [...sessions]) { s.bound = false; s.destroy(); }
      return json(res, 200, { dropped: n });
    }
    return json(res, 404, { error: 'not found' });
  } catch (e) {
    return json(res, 500, { error: String(e && e.message) });
  }
}

// ---- start ------------------------------------------------------------------------------
const serverOptions = {};
if (opts.tlsCert || opts.tlsKey) {
  if (!opts.tlsCert || !opts.tlsKey) die('--tls-cert and --tls-key go together');
  serverOptions.cert = fs.readFileSync(opts.tlsCert);
  serverOptions.key = fs.readFileSync(opts.tlsKey);
}
const smppServer = smpp.createServer(serverOptions, onSession);
const controlServer = http.createServer((req, res) => { control(req, res); });
smppServer.on('error', (e) => die(`SMPP listener: ${e.message}`));
controlServer.on('error', (e) => die(`control listener: ${e.message}`));

smppServer.listen(opts.port, '127.0.0.1', () => {
  controlServer.listen(opts.controlPort, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({
      ready: true,
      port: smppServer.address().port,
      control_port: controlServer.address().port,
    }) + '\n');
  });
});

function shutdown() {
  for (const s of [...sessions]) s.destroy();
  smppServer.close();
  controlServer.close();
  setTimeout(() => process.exit(0), 50).unref();
  process.exitCode = 0;
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// What a page RECEIVED under force_relay, checked field by field (issue 11, "Browser e2e"): the
// page-side taps that record it, and the audits of candidates and SDP. Shared by run.mjs
// (scenarios 2 and 11: one relay) and cluster.mjs (three nodes: each sender's candidates must
// name the relay of the sender's own node).
import { isIP } from 'node:net';

// What a page may learn under force_relay: the relay's address, and the placeholders the server
// writes where a sender's own address stood.
export const PLACEHOLDERS = new Set(['0.0.0.0', '::']);
const CANDIDATE_KEYS = new Set(['candidate', 'sdpMid', 'sdpMLineIndex', 'usernameFragment']);
const DESCRIPTION_KEYS = new Set(['type', 'sdp']);

// Test-side taps, installed before the client's script runs, so they see what the client does
// not show: window.__sent (every WebSocket frame the page sends), window.__recv (every frame it
// receives, recorded before the client's own handler runs), window.__added (every candidate
// handed to addIceCandidate, with the address fields the browser parsed out of it) and
// window.__remoteSdps (every description handed to setRemoteDescription).
// Runs inside the page (page.addInitScript), so it may use nothing from this module.
export function installTaps() {
  window.__sent = [];
  window.__recv = [];
  window.__added = [];
  window.__remoteSdps = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) { window.__sent.push(String(data)); return send.call(this, data); };
  // A listener added in the constructor runs before any onmessage the client sets later.
  window.WebSocket = new Proxy(WebSocket, {
    construct(target, args) {
      const ws = Reflect.construct(target, args);
      ws.addEventListener('message', (ev) => window.__recv.push(String(ev.data)));
      return ws;
    },
  });
  const pcProto = RTCPeerConnection.prototype;
  const addIceCandidate = pcProto.addIceCandidate;
  pcProto.addIceCandidate = function (init, ...rest) {
    const rec = { keys: init && typeof init === 'object' ? Object.keys(init) : [], init };
    try {
      if (init && init.candidate) {
        const c = new RTCIceCandidate(init);
        Object.assign(rec, { candidate: c.candidate, address: c.address, relatedAddress: c.relatedAddress, type: c.type });
      }
    } catch (err) {
      rec.error = String(err);
    }
    window.__added.push(rec);
    return addIceCandidate.call(this, init, ...rest);
  };
  const setRemoteDescription = pcProto.setRemoteDescription;
  pcProto.setRemoteDescription = function (desc, ...rest) {
    window.__remoteSdps.push({ type: desc && desc.type, sdp: desc && desc.sdp });
    return setRemoteDescription.call(this, desc, ...rest);
  };
}

export const taps = (entry) => entry.page.evaluate(() => ({
  sent: window.__sent, recv: window.__recv, added: window.__added, remoteSdps: window.__remoteSdps,
}));
export const parseFrames = (frames) => frames.map((f) => { try { return JSON.parse(f); } catch { return null; } }).filter((m) => m && typeof m === 'object');

// One relay address, or a set of them.
const asSet = (relayIps) => (typeof relayIps === 'string' ? new Set([relayIps]) : new Set(relayIps));

// Every IP literal in a piece of text that has no address grammar of its own.
function ipLiterals(text) {
  const found = text.match(/(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])/g) || [];
  for (const tok of text.replace(/^a=[^:]*:/, '').split(/[\s/,;=]+/)) if (isIP(tok) === 6) found.push(tok);
  return found.filter((a) => isIP(a));
}

// A candidate (with or without "a="): its connection address must be a relay (`relayIps`: one
// address or a set), its raddr a placeholder, and no other field may carry an address.
// Returns [{ field, value }].
export function auditCandidate(text, relayIps) {
  const relays = asSet(relayIps);
  const out = [];
  const fields = text.replace(/^a=/, '').replace(/^candidate:/, '').trim().split(/\s+/);
  if (fields.length < 8 || fields[6] !== 'typ') return [{ field: 'candidate (unparsable)', value: text }];
  if (!relays.has(fields[4])) out.push({ field: `candidate connection address (typ ${fields[7]})`, value: fields[4] });
  for (let i = 8; i < fields.length; i++) {
    if (fields[i] === 'raddr') {
      if (!PLACEHOLDERS.has(fields[i + 1])) out.push({ field: `candidate raddr (typ ${fields[7]})`, value: fields[i + 1] });
      i++;
    } else if (isIP(fields[i]) && !relays.has(fields[i]) && !PLACEHOLDERS.has(fields[i])) {
      out.push({ field: `candidate extension ${fields[i - 1]}`, value: fields[i] });
    }
  }
  return out;
}

// Every line of an SDP that can carry an address. o= is "o=<username> <sess-id> <sess-version>
// IN IP4|IP6 <unicast-address>" (RFC 8866 5.2): exactly six fields, the address last.
export function auditSdp(sdp, relayIps) {
  const relays = asSet(relayIps);
  const out = [];
  const ok = (a) => relays.has(a) || PLACEHOLDERS.has(a);
  for (const line of String(sdp).split(/\r?\n/)) {
    if (line.startsWith('o=')) {
      const f = line.slice(2).split(' ');
      if (f.length !== 6 || f[3] !== 'IN' || !['IP4', 'IP6'].includes(f[4])) out.push({ field: 'o= (malformed)', value: line });
      else if (!ok(f[5])) out.push({ field: 'o= unicast-address', value: f[5] });
    } else if (line.startsWith('c=')) {
      const f = line.slice(2).split(' ');
      const addr = f.length === 3 ? f[2].split('/')[0] : null;
      if (addr === null || f[0] !== 'IN' || !ok(addr)) out.push({ field: 'c= connection-address', value: addr ?? line });
    } else if (line.startsWith('a=rtcp:')) {
      const f = line.slice(7).split(' ');
      if (f.length > 1 && (f.length !== 4 || !ok(f[3]))) out.push({ field: 'a=rtcp: address', value: f[3] ?? line });
    } else if (line.startsWith('a=candidate:')) {
      out.push(...auditCandidate(line, relays));
    } else if (line.startsWith('a=remote-candidates')) {
      out.push({ field: 'a=remote-candidates', value: line });
    } else {
      for (const a of ipLiterals(line)) if (!ok(a)) out.push({ field: `other SDP line ${line.split(':')[0]}`, value: a });
    }
  }
  return out;
}

// "field: value ×n, value ×n; field: ..." — the report names what leaked, where, how often.
export function summarize(violations) {
  const by = new Map();
  for (const { field, value } of violations) {
    if (!by.has(field)) by.set(field, new Map());
    by.get(field).set(value, (by.get(field).get(value) || 0) + 1);
  }
  return [...by].map(([f, vals]) => `${f}: ${[...vals].map(([v, n]) => `${v} ×${n}`).join(', ')}`).join('; ');
}

// Everything one page (a run.mjs page entry, opened with taps) received, checked field by field.
// `relays` is the relay address every sender's candidates must name: one address for everyone,
// or a Map sender name -> address (in a cluster each sender allocates on its own node's relay).
// A frame names its sender (fromUsername) and is held to that sender's relay; what the page
// handed to its browser (addIceCandidate, setRemoteDescription) no longer names one, and is held
// to the set of them. Returns the checks as [{ name, ok, detail }] for the caller's check().
export async function receivedAddressChecks(entry, relays) {
  const bySender = typeof relays === 'string' ? null : new Map(relays);
  const relayOf = (sender) => (bySender ? bySender.get(sender) ?? [] : relays);   // unknown sender: no address allowed
  const any = bySender ? new Set(bySender.values()) : new Set([relays]);
  const label = bySender ? `its sender's relay (${[...bySender].map(([n, ip]) => `${n}: ${ip}`).join(', ')})` : relays;
  const anyLabel = bySender ? `one of ${[...any].join('/')}` : relays;

  const t = await taps(entry);
  const frames = parseFrames(t.recv);
  const candMsgs = frames.filter((m) => m.type === 'webrtc-ice-candidate');
  const descMsgs = frames.filter((m) => m.type === 'webrtc-offer' || m.type === 'webrtc-answer');
  const who = entry.name;
  const out = [];
  const check = (name, ok, detail) => out.push({ name, ok: !!ok, detail });

  const keyBad = [];
  for (const m of candMsgs) {
    const c = m.candidate;
    if (!c || typeof c !== 'object') { keyBad.push({ field: 'candidate object', value: JSON.stringify(c) }); continue; }
    for (const k of Object.keys(c)) if (!CANDIDATE_KEYS.has(k)) keyBad.push({ field: `candidate key ${k}`, value: JSON.stringify(c[k]) });
  }
  for (const m of descMsgs) {
    const d = m.offer || m.answer;
    for (const k of Object.keys(d || {})) if (!DESCRIPTION_KEYS.has(k)) keyBad.push({ field: `description key ${k}`, value: JSON.stringify(d[k]) });
  }
  check(`${who}: every received candidate object has only candidate/sdpMid/sdpMLineIndex/usernameFragment, every description only type/sdp`,
    candMsgs.length > 0 && keyBad.length === 0,
    keyBad.length ? summarize(keyBad) : `${candMsgs.length} candidates, ${descMsgs.length} descriptions`);

  const objBad = [];
  const added = t.added.filter((a) => a.init && a.init.candidate);
  // Chromium writes an IPv6 RTCIceCandidate.address in brackets ("[::1]").
  const bare = (addr) => (typeof addr === 'string' ? addr.replace(/^\[(.*)\]$/, '$1') : addr);
  for (const a of added) {
    if (a.error) objBad.push({ field: 'RTCIceCandidate (unparsable)', value: a.error });
    if (!any.has(bare(a.address))) objBad.push({ field: `RTCIceCandidate.address (${a.type})`, value: a.address });
    if (a.relatedAddress !== null && !PLACEHOLDERS.has(bare(a.relatedAddress))) objBad.push({ field: `RTCIceCandidate.relatedAddress (${a.type})`, value: a.relatedAddress });
  }
  check(`${who}: every RTCIceCandidate added has address ${anyLabel} and relatedAddress null/0.0.0.0/::`,
    added.length > 0 && objBad.length === 0, objBad.length ? summarize(objBad) : `${added.length} candidates`);

  const trickleBad = candMsgs.flatMap((m) => (m.candidate && m.candidate.candidate
    ? auditCandidate(m.candidate.candidate, relayOf(m.fromUsername)).map((v) => ({ ...v, field: `${v.field} from ${m.fromUsername}` })) : []));
  check(`${who}: every trickled candidate string names ${label} and raddr 0.0.0.0/::, nothing else`,
    candMsgs.length > 0 && trickleBad.length === 0, trickleBad.length ? summarize(trickleBad) : `${candMsgs.length} candidates`);

  // The descriptions as they came off the wire and as the page handed them to the browser.
  const sdpBad = [
    ...descMsgs.flatMap((m) => auditSdp((m.offer || m.answer || {}).sdp || '', relayOf(m.fromUsername))
      .map((v) => ({ ...v, field: `${v.field} from ${m.fromUsername}` }))),
    ...t.remoteSdps.flatMap((d) => auditSdp(d.sdp || '', any)),
  ];
  check(`${who}: every address in received SDP (o=, c=, a=rtcp:, a=candidate: and raddr, any other literal) is ${label} or 0.0.0.0/::`,
    descMsgs.length > 0 && t.remoteSdps.length > 0 && sdpBad.length === 0,
    sdpBad.length ? summarize(sdpBad) : `${descMsgs.length} descriptions received, ${t.remoteSdps.length} applied`);
  return out;
}

// Finds every IP address literal in what a page received, and names the field it sits in.
// Used by the NAT test (nat.mjs) to judge frames, candidates and SDP; unit-tested in
// addresses.test.mjs (node --test), because a scanner that misses a literal would let a leak pass.
import net from 'node:net';

// A DTLS fingerprint (a=fingerprint:sha-256 AB:CD:...): 32 or more colon-separated bytes whose
// every run of 8 groups would parse as an IPv6 address.
const FINGERPRINT = /^([0-9A-Fa-f]{2}:){15,}[0-9A-Fa-f]{2}$/;

// Every IPv4/IPv6 literal in a text, with its offset. IPv6 candidates are maximal runs of hex
// digits, colons and dots; a run that is not an address as a whole is tried again from after
// each of its colons ("ufrag:fe80::1"), except a fingerprint.
export function ipLiterals(text) {
  const out = [];
  for (const m of text.matchAll(/(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\d|\.\d)/g)) {
    if (net.isIPv4(m[0])) out.push({ ip: m[0], index: m.index });
  }
  for (const m of text.matchAll(/[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*/g)) {
    const run = m[0].endsWith('::') ? m[0] : m[0].replace(/[.:]+$/, '');
    if (FINGERPRINT.test(run)) continue;
    for (let start = 0; start < run.length;) {
      const t = run.slice(start);
      if (t.includes(':') && net.isIPv6(t)) {
        out.push({ ip: t, index: m.index + start });
        break;
      }
      const next = run.indexOf(':', start);
      if (next < 0) break;
      // "::x" may start right at a colon; otherwise skip past it.
      start = run.startsWith('::', next) && next > start ? next : next + 1;
    }
  }
  return out;
}

// Names the field an address sits in: the SDP line type, and inside a candidate whether it is
// the connection address or raddr.
export function fieldIn(line, index) {
  if (/^(a=)?candidate:/.test(line)) {
    const before = line.slice(0, index).trim().split(/\s+/);
    if (before.at(-1) === 'raddr') return 'candidate raddr';
    if (before.length === 4) return 'candidate connection address';
    return 'candidate (other field)';
  }
  const m = /^([a-z])=([a-z-]+:?)?/.exec(line);
  if (m) return m[1] === 'a' ? `SDP a=${(m[2] || '').replace(/:$/, '')}` : `SDP ${m[1]}=`;
  return null;
}

// Scans one text found at `where`; SDP is scanned line by line so each hit names its line.
export function scanText(text, where, findings) {
  const isSdp = /(^|\n)v=0\r?\n/.test(text);
  const lines = isSdp ? text.split(/\r?\n/) : [text];
  for (const line of lines) {
    for (const { ip, index } of ipLiterals(line)) {
      const field = fieldIn(line, index);
      const excerpt = line.length > 140 ? line.slice(Math.max(0, index - 60), index + 60) : line;
      findings.push({ ip, where: field ? `${where} ${field}` : where, field, excerpt });
    }
  }
  return findings;
}

// Walks parsed JSON so that \u-escaped text is seen decoded and each hit names its JSON path.
export function scanJson(value, where, findings) {
  if (typeof value === 'string') scanText(value, where, findings);
  else if (Array.isArray(value)) value.forEach((v, i) => scanJson(v, `${where}[${i}]`, findings));
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      scanText(k, `${where} (key)`, findings);
      scanJson(v, `${where}.${k}`, findings);
    }
  }
  return findings;
}

// One WebSocket frame: JSON (named by its message type), or scanned as raw text if it is not.
export function scanFrame(raw, findings) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    return scanText(raw, 'non-JSON frame', findings);
  }
  return scanJson(msg, msg && typeof msg.type === 'string' ? msg.type : 'frame', findings);
}

// Splits findings into leaks and tolerated ones. Chromium writes "o=- ... IN IP4 127.0.0.1" in
// every SDP it makes: a constant, nobody's address; tolerated there (and reported), nowhere else.
export function judge(findings, allowed) {
  const leaks = [], tolerated = [];
  for (const f of findings) {
    if (allowed.has(f.ip)) continue;
    if (f.ip === '127.0.0.1' && f.field === 'SDP o=') tolerated.push(f);
    else leaks.push(f);
  }
  return { leaks, tolerated };
}

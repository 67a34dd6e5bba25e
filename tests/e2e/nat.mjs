// The real NAT test's driver (issue 11): run by scripts/nat-test, which builds the network
// namespaces and passes their names in NAT_* variables. Not meant to be run on its own.
//
// What it proves, with the real relaychat binary and two real Chromiums, each inside its own home
// LAN behind a MASQUERADE router (docs/NAT-TEST.md has the diagram):
//   1. a force_relay call between a well-configured page (alice, LAN A) and a misconfigured one
//      (bob, LAN B, ?forcePolicy=all) connects relay/relay with media flowing;
//   2. nothing either page received (every WebSocket frame, every remote candidate it added, every
//      remote SDP, every remote candidate in getStats) names any address but the relay's and the
//      placeholders 0.0.0.0 / ::, although bob really sent his LAN and NAT-public addresses;
//      2b. nor did alice get anything of two candidates bob's page forges (a "typ relay" on his
//      LAN address; a relay candidate with extra address-carrying keys), as a hostile client would;
//   3. on each router's public side, every UDP packet (and every other IP packet) is to or from
//      the relay, and the call's media crossed it.
// One node process drives both browsers: each is launched through a tiny wrapper that execs
// Chromium inside its host namespace (the DevTools pipe is inherited across the exec).
import { chromium } from 'playwright-core';
import { spawn, execFile } from 'node:child_process';
import { readFile, writeFile, chmod } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { scanText, scanJson, scanFrame, judge as judgeWith } from './addresses.mjs';
import { sleep, waitFor } from './run.mjs';

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`nat.mjs: ${name} is not set; run scripts/nat-test, which builds the namespaces first`);
    process.exit(2);
  }
  return v;
}
const WORK = need('NAT_WORK');
const BIN = need('NAT_BIN');
const RELAY = need('NAT_RELAY');
const CONFIG = process.env.NAT_CONFIG || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const MEDIA = process.env.NAT_TEST_MEDIA === 'audio' ? 'audio' : 'video';
const CALL_S = Math.max(1, Number(process.env.NAT_TEST_CALL_S) || 6);
// "bob" (default): bob alone ignores the server's policy. "both": alice too; then only the
// server stands between two clients that would gladly connect directly through their NATs.
const MISCONFIGURED = process.env.NAT_TEST_MISCONFIGURED === 'both' ? ['alice', 'bob'] : ['bob'];
const NS_SRV = need('NAT_NS_SRV');
const HOSTS = {
  alice: { ns: need('NAT_NS_HOSTA'), router: need('NAT_NS_RTRA'), lan: '192.168.10.2', natPublic: '203.0.113.21' },
  bob: { ns: need('NAT_NS_HOSTB'), router: need('NAT_NS_RTRB'), lan: '192.168.20.2', natPublic: '203.0.113.22' },
};
// A misconfigured page ignores the server's iceTransportPolicy: it gathers host and
// server-reflexive candidates and sends them, and its relay candidates carry its own addresses
// in raddr (the client's ?forcePolicy=all test parameter, web/app.js).
for (const [name, h] of Object.entries(HOSTS)) h.query = MISCONFIGURED.includes(name) ? '?forcePolicy=all' : '';
const HTTP_PORT = 8080;   // scripts/nat-test sets it; the server is alone in its namespace
const CONNECT_WITHIN_MS = 45_000;

// ---- results ---------------------------------------------------------------------------------
const results = [];
function check(name, ok, detail = '') {
  results.push({ name, ok: !!ok, detail });
  console.log(`${ok ? '  ok  ' : '  FAIL'} ${name}${detail ? ' — ' + detail : ''}`);
  return !!ok;
}
const note = (text) => console.log(`  note ${text}`);


// ---- processes in namespaces -----------------------------------------------------------------
const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(1));

// `ip netns exec` execs the command in place, so the child's pid is the command's own.
function spawnIn(ns, cmd, args, opts = {}) {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  children.add(child);
  child.exitedWith = null;
  child.on('exit', (code, sig) => { child.exitedWith = `${code ?? sig}`; children.delete(child); });
  child.on('error', (err) => { child.exitedWith = `failed to start: ${err.message}`; children.delete(child); });
  return child;
}

async function stopChild(child, signal = 'SIGTERM') {
  if (child.exitedWith !== null) return;
  child.kill(signal);
  await waitFor(() => child.exitedWith !== null, 5000, 50);
  if (child.exitedWith === null) child.kill('SIGKILL');
}

const ANSI = /\x1b\[[0-9;]*m/g;

async function startServer() {
  // scripts/nat-test wrote the topology's RELAYCHAT__* overrides (they win over NAT_CONFIG).
  const env = { ...process.env };
  for (const line of (await readFile(path.join(WORK, 'server.env'), 'utf8')).split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  const child = spawnIn(NS_SRV, BIN, CONFIG ? ['--config', CONFIG] : [], { env, cwd: WORK });
  const logFile = createWriteStream(path.join(WORK, 'server.log'));
  const log = [];
  let http = false, turn = false;
  const onData = (buf) => {
    logFile.write(buf);
    for (const raw of buf.toString().split('\n')) {
      const line = raw.replace(ANSI, '');
      if (!line) continue;
      log.push(line);
      if (/http listening on/.test(line)) http = true;
      if (/turn listening on/.test(line)) turn = true;
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const up = await waitFor(() => child.exitedWith !== null || (http && turn) || 'waiting for the listening lines', 20_000, 100);
  if (child.exitedWith !== null || !up.ok) {
    throw new Error(`server did not start (${child.exitedWith ?? up.reason}):\n${log.slice(-30).join('\n')}`);
  }
  return { child, log };
}

// tcpdump on a router's public interface, every IP packet (UDP is what a leak would use; TCP is
// there because a page may reach the relay over TURN/TCP), written unbuffered (-U).
async function startCapture(name, ns) {
  const file = path.join(WORK, `${name}-wan.pcap`);
  const child = spawnIn(ns, 'tcpdump', ['-i', 'wan', '-n', '-U', '-Z', 'root', '-w', file, 'ip or ip6']);
  let err = '';
  child.stderr.on('data', (b) => { err += b; });
  const up = await waitFor(() => child.exitedWith !== null || /listening on/.test(err) || 'starting', 10_000, 50);
  if (child.exitedWith !== null || !up.ok) throw new Error(`tcpdump in ${ns} did not start: ${err.trim()}`);
  return { name, ns, file, child };
}

// Every packet in the capture, as { src, dst, proto }, from tcpdump's own text output.
function readCapture(file) {
  return new Promise((resolve, reject) => {
    execFile('tcpdump', ['-nr', file], { maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`tcpdump -nr ${file}: ${stderr || err.message}`));
      const packets = [];
      const unparsed = [];
      for (const line of stdout.split('\n')) {
        if (!line.trim()) continue;
        const m = /\bIP6? (\S+) > (\S+?):? /.exec(line);
        if (!m) { unparsed.push(line); continue; }
        const proto = /: UDP\b|\bUDP, /.test(line) ? 'udp' : /: Flags \[/.test(line) ? 'tcp' : /: ICMP/.test(line) ? 'icmp' : 'other';
        packets.push({ src: hostOf(m[1]), dst: hostOf(m[2]), proto, line });
      }
      resolve({ packets, unparsed });
    });
  });
}
// "203.0.113.21.40000" -> "203.0.113.21" (tcpdump appends the port with a dot); a bare
// address (a non-first fragment has no port) stays as it is.
function hostOf(text) {
  const v4 = /^(\d+\.\d+\.\d+\.\d+)(?:\.\d+)?$/.exec(text);
  if (v4) return v4[1];
  const v6 = /^(.*)\.\d+$/.exec(text);
  return v6 && net.isIPv6(v6[1]) ? v6[1] : text;
}

// ---- browsers --------------------------------------------------------------------------------
const LAUNCH_ARGS = [
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--no-sandbox',
  '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic',
  // A proxy from the environment would take the page's traffic out of the namespace topology.
  '--no-proxy-server',
];

async function launchIn(name, ns) {
  const wrapper = path.join(WORK, `chromium-${name}.sh`);
  await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${ns} ${CHROMIUM} "$@"\n`);
  await chmod(wrapper, 0o755);
  // playwright gives every launch a fresh temporary --user-data-dir.
  // getUserMedia needs a secure context; the test serves plain http on a non-loopback address
  // (a real deployment serves https, see docs/NAT-TEST.md).
  const secure = `--unsafely-treat-insecure-origin-as-secure=http://${RELAY}:${HTTP_PORT}`;
  return chromium.launch({ executablePath: wrapper, headless: true, args: [...LAUNCH_ARGS, secure] });
}

// Installed before any page script runs: records every WebSocket frame in both directions
// before the app sees it, every candidate handed to addIceCandidate (with the browser's own
// parse of its address and relatedAddress), and every SDP handed to setRemoteDescription.
function tapInit() {
  const tap = { recv: [], sent: [], added: [], remoteSdp: [] };
  Object.defineProperty(window, '__natTap', { value: tap });
  const Orig = window.WebSocket;
  const origSend = Orig.prototype.send;
  Orig.prototype.send = function (data) { tap.sent.push(String(data)); return origSend.call(this, data); };
  window.WebSocket = class extends Orig {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (ev) => {
        tap.recv.push(typeof ev.data === 'string' ? ev.data : `[non-text frame: ${Object.prototype.toString.call(ev.data)}]`);
      });
    }
  };
  const P = RTCPeerConnection.prototype;
  const origAdd = P.addIceCandidate;
  P.addIceCandidate = function (c, ...rest) {
    const rec = {};
    try {
      const init = c instanceof RTCIceCandidate ? c.toJSON() : c;
      rec.init = JSON.parse(JSON.stringify(init === undefined ? null : init));
      if (init && init.candidate) {
        const ic = new RTCIceCandidate(init);
        Object.assign(rec, { type: ic.type, address: ic.address, port: ic.port, relatedAddress: ic.relatedAddress, relatedPort: ic.relatedPort });
      }
    } catch (err) {
      rec.error = String(err);
    }
    tap.added.push(rec);
    return origAdd.call(this, c, ...rest);
  };
  const origSrd = P.setRemoteDescription;
  P.setRemoteDescription = function (d, ...rest) {
    try { tap.remoteSdp.push(String((d && d.sdp) || '')); } catch { /* recorded what we could */ }
    return origSrd.call(this, d, ...rest);
  };
}

const pages = [];

async function openClient(browser, name) {
  const h = HOSTS[name];
  const context = await browser.newContext({ viewport: { width: 1000, height: 650 } });
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  page.on('websocket', (ws) => {
    logs.push(`websocket opened: ${ws.url()}`);
    ws.on('close', () => logs.push('websocket closed'));
    ws.on('socketerror', (e) => logs.push(`websocket error: ${e}`));
  });
  page.on('requestfailed', (r) => logs.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  const entry = { name, page, context, logs };
  pages.push(entry);
  await page.addInitScript(tapInit);
  await page.goto(`http://${RELAY}:${HTTP_PORT}/${h.query}`);
  // The real UI, as a person uses it.
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForFunction(() => window.relaychat && window.relaychat.connected, null, { timeout: 15_000 });
  await page.locator('#messages li', { hasText: `${name} has joined.` }).first().waitFor({ timeout: 15_000 });
  await page.click(MEDIA === 'video' ? '#join-video' : '#join-audio');
  await page.waitForFunction(() => window.relaychat.inVoice, null, { timeout: 15_000 });
  return entry;
}

// The browser's own view of each pc (getStats), independent of the client's badge code.
function report(entry) {
  return entry.page.evaluate(async () => {
    const peers = {};
    for (const [name, pc] of window.relaychat.pcs) {
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair; });
      const cand = (id) => {
        const c = id && stats.get(id);
        return c ? { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol } : null;
      };
      const inbound = {};
      const localTypes = {};
      const remoteCandidates = [];
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp') inbound[r.kind] = (inbound[r.kind] || 0) + (r.bytesReceived || 0);
        if (r.type === 'local-candidate') localTypes[r.candidateType] = (localTypes[r.candidateType] || 0) + 1;
        if (r.type === 'remote-candidate') {
          remoteCandidates.push({ type: r.candidateType, address: r.address, ip: r.ip, port: r.port, relatedAddress: r.relatedAddress });
        }
      });
      peers[name] = {
        connectionState: pc.connectionState,
        signalingState: pc.signalingState,
        transceivers: pc.getTransceivers().length,
        policy: pc.getConfiguration().iceTransportPolicy,
        local: cand(pair && pair.localCandidateId),
        remote: cand(pair && pair.remoteCandidateId),
        inbound, localTypes, remoteCandidates,
        remoteSdp: [pc.remoteDescription, pc.currentRemoteDescription, pc.pendingRemoteDescription]
          .filter(Boolean).map((d) => d.sdp),
      };
    }
    return { peers, tap: window.__natTap };
  });
}
const reports = () => Promise.all(pages.map(report));

// ---- address scanning ------------------------------------------------------------------------
const ALLOWED = new Set([RELAY, '0.0.0.0', '::']);
const judge = (findings) => judgeWith(findings, ALLOWED);

function kindOf(ip) {
  for (const [name, h] of Object.entries(HOSTS)) {
    if (ip === h.lan) return `LAN address of ${name}`;
    if (ip === h.natPublic) return `NAT-public address of ${name}`;
  }
  if (/^(192\.168\.|10\.|172\.(1[6-9]|2\d|3[01])\.)/.test(ip)) return 'private address';
  if (/^127\./.test(ip) || ip === '::1') return 'loopback address';
  if (/^(169\.254\.|fe80:)/i.test(ip)) return 'link-local address';
  return 'address';
}

function summarize(list, max = 8) {
  const groups = new Map();
  for (const f of list) {
    const key = `${f.ip} (${kindOf(f.ip)}) in ${f.where}`;
    const g = groups.get(key) || { n: 0, excerpt: f.excerpt };
    g.n++;
    groups.set(key, g);
  }
  const parts = [...groups].slice(0, max).map(([k, g]) => `${k} x${g.n}, e.g. "${g.excerpt}"`);
  if (groups.size > max) parts.push(`... ${groups.size - max} more`);
  return parts.join('; ');
}

function checkClean(label, findings, count) {
  const { leaks, tolerated } = judge(findings);
  check(`${label}: no address but the relay's ${RELAY} and 0.0.0.0/::`, count > 0 && leaks.length === 0,
    leaks.length ? `${leaks.length} leaked: ${summarize(leaks)}` : count > 0 ? `${count} scanned` : 'nothing was recorded (tap broken?)');
  if (tolerated.length) note(`${label}: ${tolerated.length}x 127.0.0.1 in SDP o= lines (Chromium's constant, not a user's address)`);
  return leaks;
}

// ---- a hostile client ------------------------------------------------------------------------
// Candidates no browser makes but any client can send: bob's page pushes them through its real
// session (window.relaychat.send). Foundations 777001.. and ports 9/10 mark them, so their
// findings are reported apart from the browser-made traffic.
const FORGED = [
  // "typ relay" on a host address: a host candidate in disguise.
  { candidate: `candidate:777001 1 udp 41885439 ${HOSTS.bob.lan} 9 typ relay raddr 0.0.0.0 rport 0 generation 0`, sdpMid: '0', sdpMLineIndex: 0 },
  // A proper relay candidate with extra keys of the candidate object carrying addresses.
  { candidate: `candidate:777002 1 udp 41885439 ${RELAY} 10 typ relay raddr 0.0.0.0 rport 0 generation 0`, sdpMid: '0', sdpMLineIndex: 0,
    address: HOSTS.bob.lan, relatedAddress: HOSTS.bob.natPublic },
];
const isForged = (text) => /candidate:77700\d/.test(String(text || ''));
const FORGED_PORTS = new Set([9, 10]);

// ---- the test --------------------------------------------------------------------------------
async function run() {
  console.log(`nat-test: server ${BIN}${CONFIG ? ` --config ${CONFIG}` : ''}; relay ${RELAY}; media ${MEDIA}; `
    + `misconfigured (iceTransportPolicy "all"): ${MISCONFIGURED.join(', ')}`);
  const captures = [];
  for (const [name, h] of Object.entries(HOSTS)) captures.push(await startCapture(`router-of-${name}`, h.router));
  const server = await startServer();
  const browsers = [];
  let leaked = [];
  try {
    browsers.push(await launchIn('alice', HOSTS.alice.ns), await launchIn('bob', HOSTS.bob.ns));
    console.log(`  chromium ${browsers[0].version()} in ${HOSTS.alice.ns} and ${HOSTS.bob.ns}`);
    const alice = await openClient(browsers[0], 'alice');
    const t0 = Date.now();
    const bob = await openClient(browsers[1], 'bob');

    // 1. The call connects through the relay, relay on both ends of the selected pair.
    console.log('\n1. the call connects relay/relay across both NATs');
    let reps;
    const conn = await waitFor(async () => {
      reps = await reports();
      for (let i = 0; i < 2; i++) {
        const other = i === 0 ? 'bob' : 'alice';
        const p = reps[i].peers[other];
        if (!p) return `${pages[i].name} has no pc for ${other}`;
        if (p.connectionState !== 'connected') return `${pages[i].name}->${other} is ${p.connectionState}`;
        if (!p.local || p.local.type !== 'relay' || !p.remote || p.remote.type !== 'relay') {
          return `${pages[i].name}->${other} pair is ${p.local && p.local.type}/${p.remote && p.remote.type}`;
        }
      }
      return true;
    }, CONNECT_WITHIN_MS);
    check('both pages connected, selected candidate pair relay/relay on both', conn.ok,
      conn.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s after bob joined; ` + reps.map((r, i) => {
        const p = Object.values(r.peers)[0];
        return `${pages[i].name} ${p.local.relayProtocol || p.local.protocol}/${p.local.address}:${p.local.port} -> ${p.remote.address}:${p.remote.port}`;
      }).join(', ') : conn.reason);
    if (!conn.ok) return;

    for (let i = 0; i < 2; i++) {
      const who = pages[i].name, pc = Object.values(reps[i].peers)[0];
      if (MISCONFIGURED.includes(who)) {
        const nonRelay = (pc.localTypes.host || 0) + (pc.localTypes.srflx || 0);
        check(`${who} really is misconfigured: iceTransportPolicy "all", host/srflx candidates gathered`,
          pc.policy === 'all' && nonRelay > 0, `policy ${pc.policy}, local candidates ${JSON.stringify(pc.localTypes)}`);
      } else {
        check(`${who} uses iceTransportPolicy "relay" (from the server)`, pc.policy === 'relay', pc.policy);
      }
    }

    // Renegotiate from bob without an ICE restart: his new offer then carries every candidate he
    // gathered as a=candidate lines and his default candidate in c=, all for the server to rebuild.
    await bob.page.evaluate(() => window.relaychat.pcs.get('alice').addTransceiver('audio', { direction: 'recvonly' }));
    const reneg = await waitFor(async () => {
      const r = await reports();
      const a = r[0].peers.bob, b = r[1].peers.alice;
      return (a && b && a.signalingState === 'stable' && b.signalingState === 'stable' && a.transceivers === b.transceivers
        && b.transceivers >= 3 && a.connectionState === 'connected' && b.connectionState === 'connected')
        || `alice ${a && a.signalingState}/${a && a.transceivers}, bob ${b && b.signalingState}/${b && b.transceivers}`;
    }, 15_000);
    check('bob renegotiates mid-call (his offer SDP carries his candidates)', reneg.ok, reneg.reason);

    const before = await reports();
    await sleep(3000);
    const after = await reports();
    const kinds = MEDIA === 'video' ? ['audio', 'video'] : ['audio'];
    const grown = [];
    let flowing = true;
    for (let i = 0; i < 2; i++) {
      const other = i === 0 ? 'bob' : 'alice';
      for (const k of kinds) {
        const b = before[i].peers[other].inbound[k] || 0, a = after[i].peers[other].inbound[k] || 0;
        if (!(a > b)) flowing = false;
        grown.push(`${pages[i].name}<-${other} ${k} ${b}->${a}`);
      }
    }
    check(`inbound ${kinds.join(' and ')} bytes grow on both pages`, flowing, grown.join('; '));

    await bob.page.evaluate((list) => {
      for (const candidate of list) window.relaychat.send({ type: 'webrtc-ice-candidate', targetUsername: 'alice', candidate });
    }, FORGED);

    // Let the call run so the captures see a steady relayed media flow.
    await sleep(CALL_S * 1000);
    const final = await reports();

    // 2. Nothing a page received names anybody's address.
    console.log('\n2. no page received a LAN or NAT-public address');
    for (let i = 0; i < 2; i++) {
      const who = pages[i].name;
      await writeFile(path.join(WORK, `${who}-tap.json`), JSON.stringify(final[i], null, 1));
      if (!MISCONFIGURED.includes(who)) continue;
      const sent = [];
      for (const raw of final[i].tap.sent) if (!isForged(raw)) scanFrame(raw, sent);
      const sentLan = sent.filter((f) => f.ip === HOSTS[who].lan);
      const sentNat = sent.filter((f) => f.ip === HOSTS[who].natPublic);
      check(`${who} SENT its own LAN and NAT-public addresses (so there is something to hide)`,
        sentLan.length > 0 && sentNat.length > 0, summarize([...sentLan, ...sentNat], 6));
    }

    for (let i = 0; i < 2; i++) {
      const who = pages[i].name, rep = final[i];
      const recv = rep.tap.recv.filter((raw) => !isForged(raw));
      const frames = [];
      for (const raw of recv) scanFrame(raw, frames);
      leaked.push(...checkClean(`${who}'s received WebSocket frames (${recv.length})`, frames, recv.length));

      const addedRecs = rep.tap.added.filter((c) => !isForged(c.init && c.init.candidate));
      const added = [];
      for (const c of addedRecs) {
        if (c.init && typeof c.init.candidate === 'string') scanJson(c.init, 'addIceCandidate', added);
        for (const k of ['address', 'relatedAddress']) if (c[k]) scanText(c[k], `RTCIceCandidate.${k}`, added);
      }
      leaked.push(...checkClean(`${who}'s remote RTCIceCandidates added (${addedRecs.length})`, added, addedRecs.length));

      // Chromium lists candidates added with addIceCandidate in remoteDescription too: the
      // forged ones are judged in 2b.
      const sdps = [...rep.tap.remoteSdp, ...Object.values(rep.peers).flatMap((p) => p.remoteSdp)]
        .map((sdp) => sdp.split('\n').filter((l) => !isForged(l)).join('\n'));
      const inSdp = [];
      sdps.forEach((s, n) => scanText(s, `remote SDP #${n + 1}`, inSdp));
      leaked.push(...checkClean(`${who}'s remote SDPs (${sdps.length})`, inSdp, sdps.length));

      const statsCands = Object.values(rep.peers).flatMap((p) => p.remoteCandidates).filter((c) => !FORGED_PORTS.has(c.port));
      const inStats = [];
      for (const c of statsCands) {
        for (const k of ['address', 'ip', 'relatedAddress']) if (c[k]) scanText(c[k], `getStats remote-candidate.${k}`, inStats);
      }
      leaked.push(...checkClean(`${who}'s getStats remote candidates (${statsCands.length})`, inStats, statsCands.length));
    }

    // What became of bob's forged candidates at alice: dropped, or rebuilt to name only the relay.
    console.log('\n2b. a hostile client: bob forges candidates that carry his addresses');
    const forgedFrames = final[0].tap.recv.filter(isForged);
    const forgedAdded = final[0].tap.added.filter((c) => isForged(c.init && c.init.candidate));
    const forgedStats = Object.values(final[0].peers).flatMap((p) => p.remoteCandidates).filter((c) => FORGED_PORTS.has(c.port));
    const inForged = [];
    for (const raw of forgedFrames) scanFrame(raw, inForged);
    for (const p of Object.values(final[0].peers)) {
      for (const line of p.remoteSdp.flatMap((sdp) => sdp.split(/\r?\n/)).filter(isForged)) scanText(line, 'remoteDescription', inForged);
    }
    for (const c of forgedAdded) {
      for (const k of ['address', 'relatedAddress']) if (c[k]) scanText(c[k], `RTCIceCandidate.${k}`, inForged);
    }
    for (const c of forgedStats) {
      for (const k of ['address', 'ip', 'relatedAddress']) if (c[k]) scanText(c[k], `getStats remote-candidate.${k}`, inForged);
    }
    const forgedSent = final[1].tap.sent.filter(isForged).length;
    const { leaks: forgedLeaks } = judge(inForged);
    leaked.push(...forgedLeaks);
    check(`alice received nothing of bob's ${FORGED.length} forged candidates but the relay's address and placeholders`,
      forgedSent === FORGED.length && forgedLeaks.length === 0,
      `bob sent ${forgedSent}; alice received ${forgedFrames.length}, added ${forgedAdded.length}`
      + (forgedLeaks.length ? `; ${forgedLeaks.length} leaked: ${summarize(forgedLeaks)}` : ''));

    // Leave cleanly so the relay's allocations are torn down inside the capture.
    for (const e of pages) await e.page.click('#leave').catch(() => {});
    await sleep(500);
  } catch (err) {
    check('the call ran to the end', false, err.stack || String(err));
  } finally {
    if (results.some((r) => !r.ok)) await dumpDiagnostics(server);
    for (const e of pages) await e.context.close().catch(() => {});
    for (const b of browsers) await b.close().catch(() => {});
    await stopChild(server.child);
    for (const c of captures) await stopChild(c.child, 'SIGINT');
  }

  // 3. The routers' public sides carried UDP to and from the relay only.
  console.log('\n3. each router\'s public side carried traffic to/from the relay only');
  for (const [name, h] of Object.entries(HOSTS)) {
    const cap = captures.find((c) => c.name === `router-of-${name}`);
    const { packets, unparsed } = await readCapture(cap.file);
    const mine = (p) => (p.src === h.natPublic && p.dst === RELAY) || (p.src === RELAY && p.dst === h.natPublic);
    const count = (list, proto) => list.filter((p) => p.proto === proto).length;
    const udp = packets.filter((p) => p.proto === 'udp');
    const udpOther = udp.filter((p) => !mine(p));
    // A kernel's IGMP membership report (from 0.0.0.0 or the router itself, to the link-local
    // 224.0.0.0/24 that no router forwards) names nobody's address; it is reported, not failed.
    // scripts/nat-test turns multicast off on every link, so there should be none.
    const igmpChatter = (p) => p.proto === 'other' && /: igmp\b/.test(p.line)
      && /^224\.0\.0\.\d+$/.test(p.dst) && (p.src === '0.0.0.0' || p.src === h.natPublic);
    const chatter = packets.filter(igmpChatter);
    const allOther = packets.filter((p) => !mine(p) && !igmpChatter(p));
    const toRelay = udp.filter((p) => p.src === h.natPublic && p.dst === RELAY).length;
    const fromRelay = udp.filter((p) => p.src === RELAY && p.dst === h.natPublic).length;
    const show = (list) => [...new Set(list.map((p) => `${p.proto} ${p.src} > ${p.dst}`))].slice(0, 6).join(', ');
    check(`router of ${name} (${h.natPublic}): every UDP packet on its public side is to/from ${RELAY}`,
      udp.length > 0 && udpOther.length === 0 && unparsed.length === 0,
      `${udp.length} UDP packets: ${toRelay} to the relay, ${fromRelay} from it`
      + (udpOther.length ? `; ${udpOther.length} others: ${show(udpOther)}` : '')
      + (unparsed.length ? `; ${unparsed.length} unparsed lines, e.g. ${unparsed[0]}` : ''));
    check(`router of ${name}: every other IP packet on its public side is to/from ${RELAY} too`, allOther.length === 0,
      `${count(packets, 'tcp')} TCP (signaling, TURN/TCP), ${count(packets, 'icmp')} ICMP, ${count(packets, 'other')} other`
      + (allOther.length ? `; ${allOther.length} not with the relay: ${show(allOther)}` : ''));
    if (chatter.length) {
      console.log(`  note router of ${name}: ${chatter.length} IGMP membership report(s) of a kernel on the link (${show(chatter)}): no one's address, never routed`);
    }
    // A relayed call of several seconds is hundreds of packets each way; a handful would mean
    // the media took another path (or none) and the "only the relay" result would be vacuous.
    const outAll = packets.filter((p) => p.src === h.natPublic && p.dst === RELAY).length;
    const inAll = packets.filter((p) => p.src === RELAY && p.dst === h.natPublic).length;
    check(`router of ${name}: the call's media crossed it (>= 100 packets each way)`, outAll >= 100 && inAll >= 100,
      `${outAll} out, ${inAll} in (UDP and TCP)`);
  }

  if (leaked.length) {
    const fields = [...new Set(leaked.map((f) => `${f.field || f.where} (${kindOf(f.ip)} ${f.ip})`))];
    console.log(`\n  leaked fields: ${fields.join('; ')}`);
  }
}

async function dumpDiagnostics(server) {
  for (const e of pages) {
    const ui = await e.page.evaluate(() => `status "${document.getElementById('status').textContent}"; `
      + `messages: ${[...document.querySelectorAll('#messages li')].map((l) => l.textContent).join(' | ')}; `
      + `voice error: "${document.getElementById('voice-error').textContent}"; `
      + `last frames received: ${window.__natTap.recv.slice(-4).join(' | ').slice(0, 600)}`).catch((err) => err.message);
    console.log(`\n----- console of ${e.name} (${e.logs.length} lines; ${ui}) -----`);
    for (const l of e.logs.slice(-60)) console.log(`  ${l}`);
  }
  if (server) {
    console.log(`\n----- server log tail (${server.child.exitedWith ?? 'running'}) -----`);
    for (const l of server.log.slice(-60)) console.log(`  ${l}`);
  }
}

try {
  await run();
} catch (err) {
  check('the test ran to the end', false, err.stack || String(err));
}
const failed = results.filter((r) => !r.ok);
console.log(`\nnat-test: ${results.length - failed.length} passed, ${failed.length} failed`);
for (const f of failed) console.log(`  FAILED ${f.name}`);
process.exit(failed.length ? 1 : 0);

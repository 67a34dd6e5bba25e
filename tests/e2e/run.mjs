// End-to-end test: the real relaychat binary, the real built-in web client, real Chromium.
//
// Proves what issue 5 promises users: with force_relay on, calls connect through OUR relay and
// no page ever learns another page's address; a misconfigured client cannot leak its host
// candidates; with force_relay off, calls still connect. Scenario 2 also proves issue 11's
// guarantee on everything each page RECEIVED (candidate objects and their parsed address /
// relatedAddress, every SDP address line): only the relay's address (127.0.0.2 there, so that a
// leaked 127.0.0.1 cannot pass for it) and the placeholders 0.0.0.0 / :: may arrive.
// Scenarios 7-9 prove issue 17's web client: a server restart mid-call and a network blip are
// survived without a click (reconnect, log in again, rejoin, ICE restart on the same pcs);
// offline controls; a taken name reported at the name field; listen-only with every permission
// denied; the relay-unreachable message on the tile; the HTTPS note on an insecure origin; the
// call UI (speaking, 1:1 layout, pin, shortcuts, screen share); awareness (people, unread count,
// /nick); and an axe-core scan of every state (0 serious/critical violations).
// Scenario 10: invite-only mode (link opened -> in, address bar cleaned; a fresh browser without it
// or with the spent link -> told why at the name field; a reload gets back in on the member pass).
// Scenario 12 (cluster.mjs): issue 15's 3-person call, one member per cluster node, relay to relay.
// tests/e2e/capture-fixtures.mjs imports the helpers exported here.
//
// Run through scripts/e2e (installs Chromium, builds the server). Directly:
//   node tests/e2e/run.mjs
// Environment: RELAYCHAT_BIN (server binary), CHROMIUM (browser), E2E_ONLY=1,3 (some scenarios),
// E2E_KEEP=1 (keep the temporary config/data dirs), E2E_DOCS_SCREENSHOT=1 (also copy the call
// screenshot to docs/screenshot.png for the README), E2E_FIREFOX=1 (add scenario 6, Firefox;
// needs Debian's firefox-esr, which scripts/e2e then installs), FIREFOX (its path),
// E2E_WEB_FROM_DISK=1 (serve web/ from the work tree instead of the binary: client work without
// a release build; E2E_DOCS_SCREENSHOT=1 then also refreshes docs/screenshot-*.png), REDIS_SERVER
// (scenario 12's redis-server; Debian's package, which scripts/e2e installs).
import { chromium, firefox } from 'playwright-core';
import { spawn, execFile } from 'node:child_process';
import { createServer as createNetServer } from 'node:net';
import { mkdtemp, mkdir, writeFile, copyFile, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installTaps, taps, parseFrames, summarize, PLACEHOLDERS, receivedAddressChecks } from './received.mjs';
import { scenario12 } from './cluster.mjs';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.resolve(process.env.RELAYCHAT_BIN || path.join(ROOT, 'target/release/relaychat'));
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT_DIR = path.join(ROOT, 'target/e2e');
const ONLY = process.env.E2E_ONLY ? process.env.E2E_ONLY.split(',').map(Number)
  : [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, ...(process.env.E2E_FIREFOX === '1' ? [6] : [])];

export const CONNECT_WITHIN_MS = 30_000;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- results ---------------------------------------------------------------------------------
const results = [];   // { scenario, name, ok, detail }
let scenarioName = '';
export function check(name, ok, detail = '') {
  results.push({ scenario: scenarioName, name, ok: !!ok, detail });
  console.log(`${ok ? '  ok  ' : '  FAIL'} ${name}${detail ? ' — ' + detail : ''}`);
  return !!ok;
}

// Poll `fn` (returning a falsy value or a reason string while not ready, `true` when ready).
export async function waitFor(fn, timeoutMs, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last = 'not evaluated';
  for (;;) {
    try {
      const r = await fn();
      if (r === true) return { ok: true, reason: '' };
      last = r || 'not ready';
    } catch (err) {
      last = 'error: ' + err.message;
    }
    if (Date.now() >= deadline) return { ok: false, reason: last };
    await sleep(intervalMs);
  }
}

// ---- server ----------------------------------------------------------------------------------
const ANSI = /\x1b\[[0-9;]*m/g;

// Servers still running when this process ends (crash, Ctrl-C, CI timeout) go down with it.
const liveServers = new Set();
process.on('exit', () => { for (const child of liveServers) child.kill('SIGKILL'); });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(1));

// relayIp: the address the TURN relay allocates on (relay candidates carry it). The listener stays
// on 127.0.0.1, so a client's own address as the relay sees it (127.0.0.1, what Chromium puts in
// a relay candidate's raddr) differs from the relay's: a leak cannot pass for the relay address.
export async function startServer({ forceRelay, authentication = false, credentialTtl = 600, relayIp = '127.0.0.1',
  port = 0, publicHost = '', serverName = '', allowScreenShare = false, inviteOnly = false, ipv6 = false, extraConfig = '' } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'relaychat-e2e-'));
  const cfg = path.join(dir, 'relaychat.toml');
  await writeFile(cfg, `[server]
host = "127.0.0.1"
port = ${port}
data_dir = "${path.join(dir, 'data')}"
${serverName ? `server_name = "${serverName}"` : ''}

[chat]
authentication = ${authentication}
invite_only = ${inviteOnly}

[webrtc]
enabled = true
allow_video = true
allow_screen_share = ${allowScreenShare}
force_relay = ${forceRelay}

[turn]
enabled = true
listen = "127.0.0.1:0"
relay_ip = "${relayIp}"
${publicHost ? `public_host = "${publicHost}"` : ''}
credential_ttl_s = ${credentialTtl}
${ipv6 ? 'listen6 = "[::1]:0"\nrelay_ip6 = "::1"\nallocation_default_family = "keep"' : ''}
${extraConfig}
`);
  const server = { dir, log: [], child: null, base: null, exited: null };
  // Starts the binary on the config above; restart() runs it again on the same config (and so,
  // with a fixed port, on the same address), as an operator restarting the service would.
  async function launch() {
    const child = spawn(BIN, ['--config', cfg], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    liveServers.add(child);
    let httpAddr = null;
    let turnLine = null;
    server.child = child;
    server.exited = null;
    const onData = (buf) => {
      for (const raw of buf.toString().split('\n')) {
        const line = raw.replace(ANSI, '');
        if (!line) continue;
        server.log.push(line);
        const m = /http listening on (\d+\.\d+\.\d+\.\d+):(\d+)/.exec(line);
        if (m) httpAddr = `${m[1]}:${m[2]}`;
        if (/turn listening on/.test(line)) turnLine = line;
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code, sig) => { if (server.child === child) server.exited = `exited with ${code ?? sig}`; liveServers.delete(child); });
    child.on('error', (err) => { if (server.child === child) server.exited = `failed to start: ${err.message}`; });
    const up = await waitFor(() => (server.exited ? true : httpAddr && turnLine ? true : 'waiting for listening lines'), 20_000, 100);
    if (server.exited || !up.ok) return server.exited || up.reason;
    server.base = `http://${httpAddr}`;
    server.port = Number(httpAddr.split(':')[1]);
    console.log(`  server ${server.base}; ${turnLine.replace(/^.*?turn listening/, 'turn listening')}`);
    return null;
  }
  async function kill() {
    if (server.child && !server.exited) {
      server.child.kill('SIGTERM');
      await waitFor(() => !!server.exited, 5000, 100);
      if (!server.exited) server.child.kill('SIGKILL');
      await waitFor(() => !!server.exited, 2000, 50);
    }
  }
  Object.assign(server, {
    async metrics() {
      const res = await fetch(`${server.base}/metrics`);
      if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
      return parseMetrics(await res.text());
    },
    kill,
    // An operator subcommand on this server's config (e.g. ['invite', '--uses', '1']); its stdout.
    cli(args) {
      return new Promise((resolve, reject) => execFile(BIN, ['--config', cfg, ...args], { timeout: 20_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`relaychat ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout.trim()))));
    },
    async restart() {
      await kill();
      const err = await launch();
      if (err) throw new Error(`server did not restart (${err})`);
    },
    async stop() {
      await kill();
      if (!process.env.E2E_KEEP) await rm(dir, { recursive: true, force: true });
    },
  });
  const err = await launch();
  if (err) {
    await server.stop();
    throw Object.assign(new Error(`server did not start (${err})`), { server });
  }
  return server;
}

// A TCP port that was free a moment ago (for a server that must come back on the same port).
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createNetServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

// Prometheus text: sum every sample of a metric name (whatever its labels).
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)/.exec(line);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
  }
  return out;
}

// ---- browser pages ---------------------------------------------------------------------------
export const LAUNCH_ARGS = [
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--no-sandbox',
  '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic',
];

const pages = [];   // every page opened in the current scenario: { name, page, logs }

export async function openClient(browser, server, name, query = '', { join = true, tap = false, firefox = false, initScripts = [], media = 'video' } = {}) {
  // Firefox over WebDriver BiDi does not take viewport emulation; its default window is fine.
  const context = await newContext(browser, firefox ? {} : { viewport: { width: 1200, height: 700 } });
  const page = await context.newPage();
  if (tap) await page.addInitScript(installTaps);
  for (const script of initScripts) await page.addInitScript(script);
  const logs = [];
  const entry = { name, page, context, logs };
  pages.push(entry);
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(`${server.base}/${query}`);
  // Drive the real UI the way a person would: type a name, connect, click "Join with video".
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForFunction(() => window.relaychat && window.relaychat.connected, null, { timeout: 10_000 });
  await page.locator('#messages li', { hasText: `${name} has joined.` }).first().waitFor({ timeout: 10_000 });
  if (!join) return entry;
  await page.click(media === 'audio' ? '#join-audio' : '#join-video');
  await page.waitForFunction(() => window.relaychat.inVoice, null, { timeout: 10_000 });
  return entry;
}

// Everything the checks need, read from the browser's own RTCPeerConnections and getStats.
// Deliberately independent of the client's badge code, so the test does not trust the client.
export function report(entry) {
  return entry.page.evaluate(async () => {
    const peers = {};
    for (const [name, pc] of window.relaychat.pcs) {
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair; });
      if (!pair) stats.forEach((r) => { if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = pair || r; });
      const cand = (id) => {
        const c = id && stats.get(id);
        return c ? { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol } : null;
      };
      const inbound = { audio: 0, video: 0 };
      const localTypes = {};
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp') inbound[r.kind] = (inbound[r.kind] || 0) + (r.bytesReceived || 0);
        if (r.type === 'local-candidate') localTypes[r.candidateType] = (localTypes[r.candidateType] || 0) + 1;
      });
      peers[name] = {
        connectionState: pc.connectionState,
        policy: pc.getConfiguration().iceTransportPolicy,
        local: cand(pair && pair.localCandidateId),
        remote: cand(pair && pair.remoteCandidateId),
        inbound, localTypes,
        localSdpHasHost: / typ host/.test(pc.localDescription ? pc.localDescription.sdp : ''),
      };
    }
    const badges = {};
    document.querySelectorAll('#tiles [data-peer^="peer:"]').forEach((t) => {
      const b = t.querySelector('.badge');
      badges[t.dataset.peer.slice(5)] = b && !b.hidden ? { text: b.textContent, ok: b.classList.contains('ok') } : null;
    });
    return {
      me: window.relaychat.me,
      peers,
      received: [...window.relaychat.receivedRemoteCandidates],
      tiles: [...document.querySelectorAll('#tiles [data-peer]')].map((t) => t.dataset.peer),
      badges,
    };
  });
}

export const reports = (entries) => Promise.all(entries.map(report));

export function connectedReason(entries, reps, { relayBothEnds }) {
  for (let i = 0; i < entries.length; i++) {
    const names = entries.filter((_, j) => j !== i).map((e) => e.name);
    for (const peer of names) {
      const p = reps[i].peers[peer];
      if (!p) return `${entries[i].name} has no pc for ${peer}`;
      if (p.connectionState !== 'connected') return `${entries[i].name}->${peer} is ${p.connectionState}`;
      if (relayBothEnds) {
        if (!p.local || p.local.type !== 'relay') return `${entries[i].name}->${peer} local candidate is ${p.local && p.local.type}`;
        if (!p.remote || p.remote.type !== 'relay') return `${entries[i].name}->${peer} remote candidate is ${p.remote && p.remote.type}`;
      }
    }
  }
  return true;
}

function nonRelay(received) {
  return received.filter((c) => !/ typ relay( |$)/.test(c));
}

export async function checkMediaFlows(entries) {
  const before = await reports(entries);
  await sleep(2000);
  const after = await reports(entries);
  let ok = true;
  const details = [];
  for (let i = 0; i < entries.length; i++) {
    for (const [peer, p] of Object.entries(after[i].peers)) {
      const b = before[i].peers[peer];
      for (const kind of ['audio', 'video']) {
        const grew = b && p.inbound[kind] > b.inbound[kind];
        if (!grew) ok = false;
        details.push(`${entries[i].name}<-${peer} ${kind} ${b ? b.inbound[kind] : '?'}->${p.inbound[kind]}`);
      }
    }
  }
  check('inbound audio and video bytesReceived grow on every pc', ok, ok ? `${details.length} streams` : details.join('; '));
  return after;
}

// ---- scenarios -------------------------------------------------------------------------------
async function scenario1(browser) {
  const server = await startServer({ forceRelay: true });
  try {
    const [alice, bob] = [await openClient(browser, server, 'alice'), await openClient(browser, server, 'bob')];
    const t0 = Date.now();
    const carol = await openClient(browser, server, 'carol');
    const all = [alice, bob, carol];

    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('every pc connected, relay on both ends of the selected pair', conn.ok,
      conn.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s after carol joined` : conn.reason);
    await checkChat(alice, bob, carol);
    if (!conn.ok) return server;
    for (let i = 0; i < all.length; i++) {
      const pairs = Object.entries(reps[i].peers).map(([n, p]) => `${n}: ${p.local.relayProtocol || p.local.protocol}/${p.local.address}:${p.local.port}`);
      console.log(`    ${all[i].name} selected local relay candidates: ${pairs.join(', ')}`);
    }

    reps = await checkMediaFlows(all);

    for (let i = 0; i < all.length; i++) {
      const bad = nonRelay(reps[i].received);
      check(`${all[i].name} received only typ relay candidates`, reps[i].received.length > 0 && bad.length === 0,
        bad.length ? bad.join(' | ') : `${reps[i].received.length} candidates`);
    }

    const m = await server.metrics();
    check('/metrics relaychat_turn_relayed_bytes_total > 0', m.relaychat_turn_relayed_bytes_total > 0,
      `${m.relaychat_turn_relayed_bytes_total} bytes, ${m.relaychat_turn_allocations_active} allocations, ${m.relaychat_voice_participants} in voice`);

    // The client's own badge must agree with getStats.
    const badge = await waitFor(async () => {
      const r = await report(alice);
      return ['bob', 'carol'].every((n) => r.badges[n] && r.badges[n].ok) || JSON.stringify(r.badges);
    }, 5000);
    check('alice shows "relayed: your IP is hidden" for bob and carol', badge.ok, badge.reason);

    // A friendly last line for the screenshot.
    await bob.page.fill('#chat-input', 'Hi both! Green badges: we only see the relay\'s address.');
    await bob.page.press('#chat-input', 'Enter');
    await alice.page.locator('#messages li.chat', { hasText: 'Green badges' }).waitFor({ timeout: 5000 });
    const shot = path.join(OUT_DIR, 'call.png');
    await alice.page.screenshot({ path: shot });
    await axeCheck(alice.page, 'call with three (desktop)');
    console.log(`  screenshot: ${shot}`);
    // Refresh the README picture only on request, so a test run leaves the work tree clean.
    if (badge.ok && process.env.E2E_DOCS_SCREENSHOT === '1') {
      await mkdir(path.join(ROOT, 'docs'), { recursive: true });
      await copyFile(shot, path.join(ROOT, 'docs/screenshot.png'));
    }

    // Carol leaves: the others drop her, and the relay frees her allocations.
    const allocBefore = m.relaychat_turn_allocations_active;
    await carol.page.click('#leave');
    const gone = await waitFor(async () => {
      for (const e of [alice, bob]) {
        const r = await report(e);
        if (r.peers.carol) return `${e.name} still has a pc for carol`;
        if (r.tiles.includes('peer:carol')) return `${e.name} still shows carol's tile`;
      }
      return true;
    }, 5000);
    check('alice and bob drop carol\'s pc and tile after she leaves', gone.ok, gone.reason);
    // Each relay candidate a remaining pc gathered is one allocation; anything above that
    // would be a leftover of carol's calls. getStats may leave out a relay candidate whose pairs
    // were pruned once another pair won, so the ceiling is also what a bundled pc can hold at
    // most: one allocation per TURN URL it was given.
    const urls = await alice.page.evaluate(() => window.relaychat.pcs.get('bob').getConfiguration().iceServers
      .flatMap((s) => [].concat(s.urls)).filter((u) => /^turns?:/.test(u)).length);
    let remaining = 0;
    let after = null;
    const freed = await waitFor(async () => {
      // Re-read each time: a pc's stats may still be catching up on a relay candidate it gathered.
      remaining = (await reports([alice, bob])).reduce((n, r) => n + (r.peers.bob || r.peers.alice).localTypes.relay, 0);
      remaining = Math.max(remaining, 2 * urls);
      after = await server.metrics();
      return (after.relaychat_turn_allocations_active <= remaining && after.relaychat_turn_allocations_active < allocBefore
        && after.relaychat_voice_participants === 2)
        || `allocations ${after.relaychat_turn_allocations_active} (before ${allocBefore}, alice<->bob hold ${remaining}), voice ${after.relaychat_voice_participants}`;
    }, 5000);
    check('/metrics: carol\'s allocations freed, voice participants = 2', freed.ok,
      freed.ok ? `allocations ${allocBefore} -> ${after.relaychat_turn_allocations_active} (alice<->bob hold ${remaining})` : freed.reason);
    const still = connectedReason([alice, bob], await reports([alice, bob]), { relayBothEnds: true });
    check('alice and bob stay connected', still === true, still === true ? '' : still);
  } catch (err) {
    check('scenario 1 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// ---- address audit (scenario 2) ---------------------------------------------------------------
// Everything one page received, checked field by field (received.mjs). `relays`: the relay
// address every sender's candidates must name, or a Map sender -> its relay (cluster.mjs).
export async function checkReceivedAddresses(entry, relays) {
  for (const c of await receivedAddressChecks(entry, relays)) check(c.name, c.ok, c.detail);
}

// Runs in bob's page: every description he sends names 198.51.100.7 (a documentation address,
// standing in for his own) in c= and a=rtcp: lines, as a leaky client could.
function leakInSdpLines() {
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    let m = null;
    try { m = JSON.parse(data); } catch { /* not JSON: pass on */ }
    const d = m && (m.offer || m.answer);
    if (d && typeof d.sdp === 'string') {
      d.sdp = d.sdp.replace(/^c=IN IP4 0\.0\.0\.0(?=\r?$)/gm, 'c=IN IP4 198.51.100.7').replace(/^a=rtcp:(\d+) IN IP4 0\.0\.0\.0(?=\r?$)/gm, 'a=rtcp:$1 IN IP4 198.51.100.7');
      data = JSON.stringify(m);
    }
    return send.call(this, data);
  };
}

async function scenario2(browser) {
  // The relay allocates on 127.0.0.2, the listener is on 127.0.0.1: the address a client's
  // relay candidate carries in raddr (its own, as the relay saw it) is then not the relay's.
  const relayIp = '127.0.0.2';
  const server = await startServer({ forceRelay: true, relayIp });
  try {
    const alice = await openClient(browser, server, 'alice', '', { tap: true });
    // bob's page ignores the server's policy: a misconfigured client that gathers host candidates.
    // His client also writes an address into the SDP lines Chromium leaves at 0.0.0.0 (c=, a=rtcp:)
    // unless it has a default candidate, so those lines carry something to hide in every description.
    const bob = await openClient(browser, server, 'bob', '?forcePolicy=all', { tap: true, initScripts: [leakInSdpLines] });
    const t0 = Date.now();
    const carol = await openClient(browser, server, 'carol', '', { tap: true });
    const all = [alice, bob, carol];

    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: false }), CONNECT_WITHIN_MS);
    check('call connects with bob on iceTransportPolicy "all"', conn.ok,
      conn.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s after carol joined` : conn.reason);

    // Make sure the scenario really has something to hide: bob's pcs use 'all' and gathered
    // non-relay candidates, which his client sent to the server.
    const bobRep = reps[1];
    const bobPeers = Object.values(bobRep.peers);
    check('bob\'s pcs really use iceTransportPolicy "all"', bobPeers.length === 2 && bobPeers.every((p) => p.policy === 'all'),
      bobPeers.map((p) => p.policy).join(','));
    const bobHost = bobPeers.reduce((n, p) => n + (p.localTypes.host || 0) + (p.localTypes.srflx || 0), 0);
    check('bob gathered host candidates (that the server must not forward)', bobHost > 0,
      JSON.stringify(bobPeers.map((p) => p.localTypes)));

    // Renegotiate bob->alice without an ICE restart: the new offer's SDP then carries every
    // candidate bob gathered (host ones too) as a=candidate lines the server has to strip.
    await bob.page.evaluate(() => window.relaychat.pcs.get('alice').addTransceiver('audio', { direction: 'recvonly' }));
    const reneg = await waitFor(() => Promise.all([alice, bob].map((e) => e.page.evaluate((peer) => {
      const pc = window.relaychat.pcs.get(peer);
      return pc.signalingState === 'stable' && pc.getTransceivers().length === 3 && pc.connectionState === 'connected';
    }, e.name === 'bob' ? 'alice' : 'bob'))).then((v) => v.every(Boolean) || 'renegotiating'), 10_000);
    check('bob renegotiates with alice mid-call (offer SDP carries his candidates)', reneg.ok, reneg.reason);
    // And carol->bob: bob's answer then carries his candidates too, and its c= line names his
    // default candidate (Chromium picks a host address there when it has one).
    await carol.page.evaluate(() => window.relaychat.pcs.get('bob').addTransceiver('audio', { direction: 'recvonly' }));
    const reneg2 = await waitFor(() => Promise.all([carol, bob].map((e) => e.page.evaluate((peer) => {
      const pc = window.relaychat.pcs.get(peer);
      return pc.signalingState === 'stable' && pc.getTransceivers().length === 3 && pc.connectionState === 'connected';
    }, e.name === 'bob' ? 'carol' : 'bob'))).then((v) => v.every(Boolean) || 'renegotiating'), 10_000);
    check('carol renegotiates with bob mid-call (bob\'s answer SDP carries his candidates)', reneg2.ok, reneg2.reason);
    // The descriptions went through the server's relay-only rebuild: the fingerprints must have
    // survived it, or the two ends of a link would show different verification codes.
    await checkVerificationCodes(all);

    // And a deliberately leaky candidate straight from bob's signaling channel.
    await bob.page.evaluate(() => window.relaychat.send({
      type: 'webrtc-ice-candidate', targetUsername: 'alice',
      candidate: { candidate: 'candidate:9 1 udp 2122260223 192.0.2.77 40000 typ host generation 0', sdpMid: '0', sdpMLineIndex: 0 },
    }));
    // And one of bob's real relay candidates for alice, with keys a client may add and a
    // server must not pass on.
    const relayForAlice = (await taps(bob)).sent.map((f) => JSON.parse(f))
      .find((m) => m.type === 'webrtc-ice-candidate' && m.targetUsername === 'alice' && / typ relay/.test(m.candidate.candidate));
    check('bob has a relay candidate for alice to resend with extra keys', !!relayForAlice);
    if (relayForAlice) {
      await bob.page.evaluate((c) => window.relaychat.send({
        type: 'webrtc-ice-candidate', targetUsername: 'alice',
        candidate: { ...c, address: '192.0.2.78', relatedAddress: '192.0.2.79', relatedPort: 4242 },
      }), relayForAlice.candidate);
    }
    await sleep(1000);

    const sent = await bob.page.evaluate(() => {
      let trickled = 0, inSdp = 0;
      for (const raw of window.__sent) {
        const m = JSON.parse(raw);
        if (m.type === 'webrtc-ice-candidate' && m.candidate && !/ typ relay/.test(m.candidate.candidate)) trickled++;
        const d = m.offer || m.answer;
        if (d) inSdp += d.sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:') && !/ typ relay/.test(l)).length;
      }
      return { trickled, inSdp };
    });
    check('bob sent non-relay candidates, trickled and inside SDP', sent.trickled > 0 && sent.inSdp > 0, JSON.stringify(sent));

    reps = await reports(all);
    for (const i of [0, 2]) {
      const bad = nonRelay(reps[i].received);
      check(`${all[i].name} received only typ relay candidates (incl. SDP lines)`, reps[i].received.length > 0 && bad.length === 0,
        bad.length ? bad.join(' | ') : `${reps[i].received.length} candidates`);
    }
    for (const i of [0, 2]) {
      const p = reps[i].peers.bob;
      check(`${all[i].name}'s remote candidate for bob is relay`, p && p.remote && p.remote.type === 'relay', JSON.stringify(p && p.remote));
    }
    await mediaAndMetrics(server, all);

    // The test proves something only if bob really sent his own addresses in raddr.
    const bobSent = parseFrames((await taps(bob)).sent);
    const sentRaddr = [];
    for (const m of bobSent) {
      const lines = m.type === 'webrtc-ice-candidate' && m.candidate ? [m.candidate.candidate || '']
        : (m.offer || m.answer) ? String((m.offer || m.answer).sdp).split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')) : [];
      for (const l of lines) {
        const r = / typ relay .*?raddr (\S+)/.exec(l);
        if (r && !PLACEHOLDERS.has(r[1])) sentRaddr.push({ field: 'bob sent relay raddr', value: r[1] });
      }
    }
    check('bob SENT relay candidates with a real (non-placeholder) raddr', sentRaddr.length > 0,
      sentRaddr.length ? summarize(sentRaddr) : 'none: the scenario has nothing to hide');
    for (const e of all) await checkReceivedAddresses(e, relayIp);
  } catch (err) {
    check('scenario 2 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// docs/PROTOCOL.md's worked example of a call verification code, computed with python3 hashlib.
export const VERIFY_EXAMPLE = {
  a: 'sha-256 5E:1A:5F:69:0C:6B:8F:91:E4:3A:52:70:3B:2D:1F:4E:7B:99:A6:1D:0C:33:D1:8B:4E:07:43:DD:AC:F9:48:3B',
  b: 'sha-256 0B:9C:27:4F:E1:83:6A:D0:55:12:C8:3E:9F:A4:71:06:BD:2E:44:F8:19:7C:E3:60:8A:D5:21:3B:96:0F:CE:77',
  code: '343 263 496 287',
};

// The scheme again, in Node, so the pages' codes are checked against an implementation that
// is not the page's own.
function verificationCodeInNode(fpA, fpB) {
  const norm = (fp) => { const [h, x] = fp.trim().split(/\s+/); return `${h.toLowerCase()} ${x.toUpperCase()}`; };
  const digest = createHash('sha256').update([norm(fpA), norm(fpB)].sort().join('\n')).digest();
  const digits = String(digest.readBigUInt64BE(0) % 1_000_000_000_000n).padStart(12, '0');
  return digits.match(/.../g).join(' ');
}

// Call verification codes: each link's two tiles show the same code, and it is the one the
// documented scheme gives for the fingerprints the two pcs really use; a forged fingerprint
// (what a server in the middle would have to send) gives another code.
async function checkVerificationCodes(all) {
  const shown = async (e) => e.page.evaluate(() => {
    const out = {};
    for (const [name, pc] of window.relaychat.pcs) {
      const fp = (d) => (/^a=fingerprint:(.+)$/m.exec(d ? d.sdp : '') || [])[1]?.trim() || '';
      const el = document.querySelector(`[data-peer="${CSS.escape('peer:' + name)}"] .verify`);
      out[name] = { code: el && !el.hidden ? el.dataset.code : '', label: el ? el.getAttribute('aria-label') : '',
        local: fp(pc.currentLocalDescription), remote: fp(pc.currentRemoteDescription) };
    }
    return out;
  });
  let views;
  const ready = await waitFor(async () => {
    views = await Promise.all(all.map(shown));
    const missing = all.flatMap((e, i) => Object.entries(views[i]).filter(([, v]) => !v.code).map(([n]) => `${e.name}->${n}`));
    return missing.length === 0 || `no code yet: ${missing.join(', ')}`;
  }, 10_000);
  check('every tile shows a verification code', ready.ok, ready.reason);
  const codes = [];
  for (let i = 0; i < all.length; i++) {
    for (let j = i + 1; j < all.length; j++) {
      const [a, b] = [all[i], all[j]];
      const ab = views[i][b.name], ba = views[j][a.name];
      if (!ab || !ba) { check(`${a.name} and ${b.name} see each other`, false); continue; }
      check(`${a.name} and ${b.name} show the same code for each other`, ab.code && ab.code === ba.code, `${ab.code} / ${ba.code}`);
      check(`${a.name}'s fingerprint for ${b.name} arrived unchanged (through the SDP rebuild)`,
        ab.remote && ab.remote === ba.local && ba.remote === ab.local);
      check(`${a.name}-${b.name} code follows the documented scheme`, ab.code === verificationCodeInNode(ab.local, ab.remote),
        `${ab.code} vs ${verificationCodeInNode(ab.local, ab.remote)}`);
      check(`${a.name}'s code for ${b.name} is explained to screen readers`,
        ab.label.includes(ab.code) && ab.label.includes(`with ${b.name} over another channel`), ab.label);
      codes.push(ab.code);
    }
  }
  check('each link has its own code', new Set(codes).size === codes.length, codes.join(', '));
  const [a, b] = [all[0], all[1]];
  const { local, remote } = views[0][b.name];
  // One hex digit of the remote fingerprint changed, as a forged description would have it.
  const forged = remote.replace(/[0-9A-F](?=:[0-9A-F]{2}$)/, (d) => (d === '0' ? '1' : '0'));
  const page = await a.page.evaluate(async ({ local, remote, forged, ex }) => ({
    real: await window.relaychat.verificationCode(local, remote),
    swapped: await window.relaychat.verificationCode(remote, local),
    lower: await window.relaychat.verificationCode(local, remote.toLowerCase()),
    forged: await window.relaychat.verificationCode(local, forged),
    example: await window.relaychat.verificationCode(ex.a, ex.b),
  }), { local, remote, forged, ex: VERIFY_EXAMPLE });
  check('the code does not depend on which side computes it (order, hex case)',
    page.real === views[0][b.name].code && page.swapped === page.real && page.lower === page.real, JSON.stringify(page));
  check('a forged fingerprint gives another code', forged !== remote && page.forged && page.forged !== page.real,
    `${page.real} -> ${page.forged}`);
  check('the page computes docs/PROTOCOL.md\'s worked example', page.example === VERIFY_EXAMPLE.code
    && verificationCodeInNode(VERIFY_EXAMPLE.a, VERIFY_EXAMPLE.b) === VERIFY_EXAMPLE.code, page.example);
}

async function scenario3(browser) {
  const server = await startServer({ forceRelay: false });
  try {
    const alice = await openClient(browser, server, 'alice');
    const t0 = Date.now();
    const bob = await openClient(browser, server, 'bob');
    const all = [alice, bob];
    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: false }), CONNECT_WITHIN_MS);
    check('call connects with force_relay off', conn.ok,
      conn.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s; alice uses ${reps[0].peers.bob.local.type}, bob uses ${reps[1].peers.alice.local.type}` : conn.reason);
    if (!conn.ok) return server;
    check('pcs use iceTransportPolicy "all"', reps.every((r) => Object.values(r.peers).every((p) => p.policy === 'all')));
    await checkMediaFlows(all);
    // The badge must tell the truth either way.
    const badge = await waitFor(async () => {
      const r = await report(alice);
      const b = r.badges.bob;
      const relayed = r.peers.bob && r.peers.bob.local && r.peers.bob.local.type === 'relay';
      return (b && b.ok === relayed) || `badge ${JSON.stringify(b)} vs local ${JSON.stringify(r.peers.bob && r.peers.bob.local)}`;
    }, 5000);
    check('alice\'s badge for bob matches the selected pair', badge.ok, badge.reason);

    // Mute and camera off: local tracks disabled, bob's tile for alice follows.
    await alice.page.click('#mute');
    await alice.page.click('#camera');
    const media = await waitFor(async () => {
      const local = await alice.page.evaluate(() => [...window.relaychat.pcs.get('bob').getSenders()].map((s) => s.track && `${s.track.kind}:${s.track.enabled}`).join());
      const tile = await bob.page.evaluate(() => document.querySelector('[data-peer="peer:alice"] .media').textContent);
      return (local.includes('audio:false') && local.includes('video:false') && tile === 'mic off · cam off') || `alice ${local}; bob shows "${tile}"`;
    }, 5000);
    check('mute + camera off disable alice\'s tracks and bob\'s tile says "mic off · cam off"', media.ok, media.reason);
    await alice.page.click('#mute');
    const unmuted = await waitFor(() => bob.page.evaluate(() => document.querySelector('[data-peer="peer:alice"] .media').textContent === 'mic on · cam off'), 5000);
    check('unmute shows "mic on" at bob', unmuted.ok, unmuted.reason);

    // Glare: both ends renegotiate at the same instant; perfect negotiation must settle it.
    await Promise.all([alice, bob].map((e) => e.page.evaluate((peer) => {
      window.relaychat.pcs.get(peer).addTransceiver('video', { direction: 'recvonly' });
    }, e.name === 'alice' ? 'bob' : 'alice')));
    const glare = await waitFor(async () => {
      const st = await Promise.all([alice, bob].map((e) => e.page.evaluate((peer) => {
        const pc = window.relaychat.pcs.get(peer);
        return `${pc.signalingState}/${pc.connectionState}/${pc.getTransceivers().length}`;
      }, e.name === 'alice' ? 'bob' : 'alice')));
      return (st[0] === st[1] && st[0] === 'stable/connected/4') || st.join(' vs ');
    }, 10_000);
    const collisions = await Promise.all([alice, bob].map((e) => e.page.evaluate(() => window.relaychat.offerCollisions)));
    check('simultaneous offers (glare) settle: both stable, connected, same 4 transceivers', glare.ok && collisions.some((n) => n > 0),
      `${glare.reason || 'settled'}; collisions seen by alice/bob: ${collisions.join('/')}`);

    // Bob on a fresh page (a new certificate): alice's tile must show the new link's code, not
    // the old one, and it must match what bob's new page shows.
    const codeFor = (e, peer) => e.page.evaluate((p) => {
      const el = document.querySelector(`[data-peer="${CSS.escape('peer:' + p)}"] .verify`);
      return el && !el.hidden ? el.dataset.code : '';
    }, peer);
    const oldCode = await codeFor(alice, 'bob');
    await bob.context.close();
    const bob2 = await openClient(browser, server, 'bob');
    const renewed = await waitFor(async () => {
      const [a, b] = [await codeFor(alice, 'bob'), await codeFor(bob2, 'alice')];
      return (a && a !== oldCode && a === b) || `alice shows "${a}" (was "${oldCode}"), bob's new page "${b}"`;
    }, 15_000);
    check('a new page for bob (new certificate) gives a new verification code on both ends', oldCode && renewed.ok, renewed.reason);
  } catch (err) {
    check('scenario 3 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// Chat through the real UI: escaping, typing indicator, a command, while the call runs.
async function checkChat(alice, bob, carol) {
  const text = 'hi <b>bold</b> <img src=x onerror="window.pwned=1">';
  await alice.page.fill('#chat-input', text);
  await alice.page.press('#chat-input', 'Enter');
  const seen = await waitFor(() => bob.page.evaluate((t) => {
    const li = [...document.querySelectorAll('#messages li.chat')].at(-1);
    if (!li || !li.textContent.includes(t)) return 'not yet';
    return (li.querySelector('span').children.length === 0 && !window.pwned) || 'chat text was parsed as HTML';
  }, text), 5000);
  check('chat arrives at bob as literal text (no HTML injection)', seen.ok, seen.reason);

  await bob.page.fill('#chat-input', 'typing');   // fires the input event like a keystroke
  const typing = await waitFor(() => alice.page.evaluate(() => document.getElementById('typing').textContent.includes('bob is typing')), 5000);
  check('alice sees "bob is typing…"', typing.ok, typing.reason);
  await bob.page.fill('#chat-input', '');

  await carol.page.fill('#chat-input', '/list');
  await carol.page.press('#chat-input', 'Enter');
  const list = await waitFor(() => carol.page.evaluate(() => {
    const li = [...document.querySelectorAll('#messages li.system')].find((l) => l.textContent.includes('Online users:'));
    return !!li && ['alice', 'bob', 'carol'].every((n) => li.textContent.includes(n));
  }), 5000);
  check('/list typed in the chat box lists alice, bob and carol', list.ok, list.reason);
}

// Authentication mode: the login form appears, /register and /login go as chat content.
async function scenario4(browser) {
  const server = await startServer({ forceRelay: true, authentication: true, port: await freePort() });
  try {
    const context = await newContext(browser, { viewport: { width: 375, height: 740 } });
    const page = await context.newPage();
    const logs = [];
    pages.push({ name: 'dave', page, context, logs });
    page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
    await page.goto(`${server.base}/`);
    await page.fill('#name', 'dave');
    await page.click('#connect');
    const form = await waitFor(() => page.isVisible('#auth-form'), 5000);
    check('"Authentication required." shows the login form', form.ok, form.reason);
    await axeCheck(page, 'auth form (phone)');
    await page.fill('#auth-name', 'dave');
    await page.fill('#auth-pass', 'correcthorse');
    await page.click('#register');
    const reg = await waitFor(() => page.evaluate(() => document.getElementById('auth-msg').textContent.includes('Registered')), 5000);
    check('register through the form', reg.ok, reg.reason);
    await sleep(1100);   // stay under the chat rate limit
    await page.click('#login');
    const inn = await waitFor(async () => !(await page.isVisible('#auth-form')) || 'form still shown', 5000);
    check('login through the form hides it and lets dave chat', inn.ok, inn.reason);
    await page.fill('#chat-input', 'hello from dave');
    await page.press('#chat-input', 'Enter');
    const chat = await waitFor(() => page.evaluate(() => [...document.querySelectorAll('#messages li.chat')].some((l) => l.textContent.includes('hello from dave'))), 5000);
    check('dave\'s chat message comes back', chat.ok, chat.reason);
    await docsShot(page, 'screenshot-auth-phone.png');
    await axeCheck(page, 'chat after login (phone)');

    // A server restart: the page reconnects and logs dave in again by itself (no form).
    await server.restart();
    const back = await waitFor(async () => {
      const st = await page.evaluate(() => ({ connected: window.relaychat.connected, me: window.relaychat.me,
        form: !document.getElementById('auth-form').hidden, status: document.getElementById('status').textContent,
        reconnects: window.relaychat.reconnects }));
      return (st.connected && st.reconnects === 1 && !st.form && st.status === 'online as dave') || JSON.stringify(st);
    }, 30_000, 500);
    check('after a server restart dave is logged in again without the form', back.ok, back.reason);
  } catch (err) {
    check('scenario 4 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// Short-lived TURN credentials: the server pushes webrtc-credentials, the client applies them
// with setConfiguration, and an ICE restart after the first ones expired gets new allocations.
async function scenario5(browser) {
  const ttl = 8;
  const server = await startServer({ forceRelay: true, credentialTtl: ttl });
  try {
    const alice = await openClient(browser, server, 'alice');
    const bob = await openClient(browser, server, 'bob');
    const all = [alice, bob];
    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('call connects (relay, both ends)', conn.ok, conn.reason);
    if (!conn.ok) return server;
    const firstPort = reps[1].peers.alice.local.port;
    const turnUser = (e, peer) => e.page.evaluate((p) => window.relaychat.pcs.get(p).getConfiguration().iceServers[0].username, peer);
    const before = { alice: await turnUser(alice, 'bob'), bob: await turnUser(bob, 'alice') };

    const pushed = await waitFor(async () => {
      const now = { alice: await turnUser(alice, 'bob'), bob: await turnUser(bob, 'alice') };
      return (now.alice !== before.alice && now.bob !== before.bob) || `still ${JSON.stringify(now)}`;
    }, ttl * 1000 + 5000, 500);
    check('webrtc-credentials pushes reach every pc (setConfiguration)', pushed.ok, pushed.ok ? `was ${before.alice}` : pushed.reason);

    // Wait until the first credentials have expired, then restart ICE from the impolite side
    // (bob, since "alice" < "bob"): new allocations must use the pushed credentials.
    const expiry = Number(before.bob.split(':')[0]) * 1000;
    await sleep(Math.max(0, expiry - Date.now()) + 1500);
    await bob.page.evaluate(() => window.relaychat.pcs.get('alice').restartIce());
    const again = await waitFor(async () => {
      const r = await reports(all);
      const ready = connectedReason(all, r, { relayBothEnds: true });
      if (ready !== true) return ready;
      return r[1].peers.alice.local.port !== firstPort || 'still on the first allocation';
    }, 15_000, 500);
    check('ICE restart after the first credentials expired reconnects on a new relay allocation', again.ok, again.reason);
    await checkMediaFlows(all);
  } catch (err) {
    check('scenario 5 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// Firefox (Debian's firefox-esr over WebDriver BiDi) in a relay-only call with Chromium.
// Opt-in (E2E_FIREFOX=1): it needs the firefox-esr package, which CI does not install.
async function scenario6(browser) {
  const firefoxPath = process.env.FIREFOX || '/usr/bin/firefox-esr';
  const ff = await firefox.launch({
    channel: 'moz-firefox', executablePath: firefoxPath, headless: true,
    firefoxUserPrefs: {
      'media.navigator.streams.fake': true,            // fake camera + microphone
      'media.navigator.permission.disabled': true,     // no permission prompt
      'media.peerconnection.ice.loopback': true,       // the test's TURN server is on 127.0.0.1
    },
  });
  const server = await startServer({ forceRelay: true });
  try {
    const alice = await openClient(browser, server, 'alice');
    const t0 = Date.now();
    const fox = await openClient(ff, server, 'fox', '', { firefox: true });
    const all = [alice, fox];
    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('Chromium <-> Firefox call connects, relay on both ends', conn.ok,
      conn.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s; Firefox ${ff.version()}` : conn.reason);
    if (!conn.ok) return server;
    reps = await checkMediaFlows(all);
    for (let i = 0; i < all.length; i++) {
      const bad = nonRelay(reps[i].received);
      check(`${all[i].name} received only typ relay candidates`, reps[i].received.length > 0 && bad.length === 0,
        bad.length ? bad.join(' | ') : `${reps[i].received.length} candidates`);
    }
    const badge = await waitFor(async () => {
      const r = await report(fox);
      return (r.badges.alice && r.badges.alice.ok) || JSON.stringify(r.badges);
    }, 5000);
    check('Firefox shows "relayed: your IP is hidden" (getStats without transport stats)', badge.ok, badge.reason);
    await fox.page.screenshot({ path: path.join(OUT_DIR, 'firefox.png') });
    await fox.page.click('#leave');
    const gone = await waitFor(async () => {
      const r = await report(alice);
      return (!r.peers.fox && !r.tiles.includes('peer:fox')) || 'alice still has fox';
    }, 5000);
    check('alice drops fox after Firefox leaves', gone.ok, gone.reason);
  } catch (err) {
    check('scenario 6 ran to the end', false, err.stack || String(err));
  } finally {
    server.extraCleanup = () => ff.close();
  }
  return server;
}

async function mediaAndMetrics(server, all) {
  await checkMediaFlows(all);
  const m = await server.metrics();
  check('/metrics relaychat_turn_relayed_bytes_total > 0', m.relaychat_turn_relayed_bytes_total > 0, `${m.relaychat_turn_relayed_bytes_total} bytes`);
}


// E2E_WEB_FROM_DISK=1 serves web/*.{html,js,css} from the work tree instead of the copies
// embedded in the binary: for iterating on the client without a release build each time.
// Normal runs (and CI) never set it, so they test what the binary really serves.
const WEB_FILES = { '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/style.css': 'style.css' };
export async function newContext(browser, options) {
  const context = await browser.newContext(options);
  if (process.env.E2E_WEB_FROM_DISK === '1') {
    await context.route((url) => url.pathname in WEB_FILES, async (route) => {
      const file = WEB_FILES[new URL(route.request().url()).pathname];
      const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.css') ? 'text/css' : 'text/html';
      route.fulfill({ status: 200, contentType: `${type}; charset=utf-8`, body: await readFile(path.join(ROOT, 'web', file), 'utf8') });
    });
  }
  return context;
}

// Pages fulfilled by E2E_WEB_FROM_DISK carry no address space, so Chromium's local network
// access checks would block their WebSocket to 127.0.0.1; the embedded pages do not need this.
const devArgs = process.env.E2E_WEB_FROM_DISK === '1' ? ['--disable-features=LocalNetworkAccessChecks'] : [];

// ---- accessibility (axe-core) ------------------------------------------------------------------
let axeSource = null;
const axeScans = [];   // { state, violations } for the summary
// Runs axe-core in the page as it is now; the check fails on any serious or critical violation.
// Evaluated through the DevTools protocol, so a strict CSP on the page does not get in the way.
export async function axeCheck(page, state) {
  axeSource = axeSource || await readFile(path.join(ROOT, 'tests/e2e/node_modules/axe-core/axe.min.js'), 'utf8');
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length,
      targets: v.nodes.slice(0, 3).map((n) => `${n.target.join(' ')}${n.any[0] ? ` (${n.any[0].message})` : ''}`) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  axeScans.push({ state, violations: result.length, bad: bad.length });
  check(`axe-core: no serious/critical violation in state "${state}"`, bad.length === 0,
    bad.length ? bad.map((v) => `${v.id} (${v.impact}, ${v.nodes}): ${v.targets.join('; ')}`).join(' | ')
      : `${result.length} minor/moderate: ${result.map((v) => v.id).join(', ') || 'none'}`);
}

async function docsShot(page, name) {
  const shot = path.join(OUT_DIR, name);
  await page.screenshot({ path: shot });
  if (process.env.E2E_DOCS_SCREENSHOT === '1') await copyFile(shot, path.join(ROOT, 'docs', name));
}

const visibleText = (page, sel) => page.evaluate((s) => {
  const el = document.querySelector(s);
  return el && !el.hidden && el.offsetParent !== null ? el.textContent : null;
}, sel);

// ---- scenario 7: connection life ------------------------------------------------------------
// The server process is restarted mid-call on the same port: both pages reconnect on their own,
// log back in to the call and resume it on the same RTCPeerConnections (ICE restart). While the
// server is away, what needs it is disabled, typed text is kept and the camera can be turned off.
async function scenario7(browser) {
  const server = await startServer({ forceRelay: true, port: await freePort() });
  try {
    const alice = await openClient(browser, server, 'alice');
    const bob = await openClient(browser, server, 'bob');
    const carol = await openClient(browser, server, 'carol', '', { join: false });
    const call = [alice, bob];
    let conn = await waitFor(async () => connectedReason(call, await reports(call), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('alice and bob are in a relayed call', conn.ok, conn.reason);
    if (!conn.ok) return server;
    // Mark the live pcs: after the restart the same objects must carry the call (ICE restart).
    await alice.page.evaluate(() => { window.relaychat.pcs.get('bob').__before = true; });
    await bob.page.evaluate(() => { window.relaychat.pcs.get('alice').__before = true; });

    await server.kill();
    const tDown = Date.now();
    const banner = await waitFor(async () => {
      const t = await visibleText(alice.page, '#banner');
      return (t && /can't reach the server at 127\.0\.0\.1:\d+; retrying in \d+ s/i.test(t)) || `banner: ${t}`;
    }, 10_000);
    check('offline: a banner says "can\'t reach the server at HOST; retrying in N s"', banner.ok, banner.ok ? (await visibleText(alice.page, '#banner-text')) : banner.reason);
    const offline = await carol.page.evaluate(() => ({
      send: document.getElementById('send').disabled,
      joins: ['join-audio', 'join-video', 'join-listen'].map((id) => document.getElementById(id).disabled),
    }));
    check('offline: Send and every Join button are disabled', offline.send && offline.joins.every(Boolean), JSON.stringify(offline));
    // A forced click on the disabled "Join with video" must not open the camera.
    await carol.page.click('#join-video', { force: true }).catch(() => {});
    await sleep(300);
    const carolTracks = await carol.page.evaluate(() => window.relaychat.localTracks);
    check('offline: "Join with video" does not turn the camera on', carolTracks.length === 0, JSON.stringify(carolTracks));
    await alice.page.fill('#chat-input', 'typed while offline');
    await alice.page.press('#chat-input', 'Enter');
    const kept = await alice.page.inputValue('#chat-input');
    const note = await visibleText(alice.page, '#chat-note');
    check('offline: a message sent while offline stays in the box, and a note says why', kept === 'typed while offline' && /Offline/.test(note || ''),
      `${JSON.stringify(kept)}; note: ${note}`);
    const cam = await alice.page.evaluate(() => ['mute', 'camera', 'leave'].map((id) => {
      const b = document.getElementById(id);
      return `${id}:${!b.hidden && b.offsetParent !== null && !b.disabled ? 'usable' : 'NOT usable'}`;
    }));
    check('offline, in a call: Mute, Camera and Leave stay usable', cam.every((c) => c.endsWith(':usable')), cam.join(' '));
    await axeCheck(alice.page, 'offline banner (call)');
    await docsShot(alice.page, 'screenshot-reconnecting.png');

    await sleep(1500);   // a restart is rarely instant
    await server.restart();
    const tUp = Date.now();
    let reps;
    conn = await waitFor(async () => {
      const st = await Promise.all(call.map((e) => e.page.evaluate(() => `${window.relaychat.connected}/${window.relaychat.inVoice}`)));
      if (st.some((x) => x !== 'true/true')) return `connected/inVoice: ${st.join(' ')}`;
      return connectedReason(call, (reps = await reports(call)), { relayBothEnds: true });
    }, 45_000, 500);
    check('after the restart both pages reconnect, rejoin the call and the pcs connect again (relay)', conn.ok,
      conn.ok ? `${((Date.now() - tUp) / 1000).toFixed(1)} s after the server was back (${((Date.now() - tDown) / 1000).toFixed(1)} s outage in all)` : conn.reason);
    if (!conn.ok) return server;
    const same = await Promise.all([alice.page.evaluate(() => window.relaychat.pcs.get('bob').__before === true),
      bob.page.evaluate(() => window.relaychat.pcs.get('alice').__before === true)]);
    check('the call resumed on the same RTCPeerConnections (ICE restart, no new call setup)', same.every(Boolean), same.join('/'));
    await checkMediaFlows(call);
    const after = await alice.page.evaluate(() => ({ banner: document.getElementById('banner').hidden, send: document.getElementById('send').disabled,
      reconnects: window.relaychat.reconnects, status: document.getElementById('status').textContent }));
    check('online again: banner gone, Send enabled, status "online as alice"', after.banner && !after.send && after.status === 'online as alice', JSON.stringify(after));
    await alice.page.press('#chat-input', 'Enter');
    const delivered = await waitFor(() => bob.page.evaluate(() => [...document.querySelectorAll('#messages li.chat')].some((l) => l.textContent.includes('typed while offline'))), 5000);
    check('the kept text is sent once back online', delivered.ok, delivered.reason);

    // A network blip on alice's side only (the browser goes offline for a few seconds): the
    // server sees her leave, bob drops her; she comes back and the call is set up again.
    await alice.context.setOffline(true);
    const blip = await waitFor(async () => {
      const t = await visibleText(alice.page, '#banner-text');
      return (t && /offline/i.test(t)) || `banner: ${t}`;
    }, 8000);
    check('network blip: alice\'s banner says she is offline', blip.ok, blip.ok ? await visibleText(alice.page, '#banner-text') : blip.reason);
    await sleep(3000);
    await alice.context.setOffline(false);
    const tBack = Date.now();
    const again = await waitFor(async () => {
      const st = await Promise.all(call.map((e) => e.page.evaluate(() => `${window.relaychat.connected}/${window.relaychat.inVoice}`)));
      if (st.some((x) => x !== 'true/true')) return `connected/inVoice: ${st.join(' ')}`;
      return connectedReason(call, await reports(call), { relayBothEnds: true });
    }, 45_000, 500);
    check('after the blip alice reconnects and the call connects again (relay)', again.ok,
      again.ok ? `${((Date.now() - tBack) / 1000).toFixed(1)} s after the network was back` : again.reason);
    if (again.ok) await checkMediaFlows(call);
  } catch (err) {
    check('scenario 7 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// Runs in a page before its script: every getUserMedia is refused, as when the user clicked
// "Block" (or a browser policy does).
function denyMedia() {
  navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
}

// ---- scenario 8: lobby, plain-language errors, listen-only, awareness, the call UI, axe ---------
async function scenario8(browser) {
  const server = await startServer({ forceRelay: true, serverName: 'Test Lounge', allowScreenShare: true });
  try {
    // Landing page, then a name that is taken: the error belongs at the name field.
    const erin = await openClient(browser, server, 'erin', '', { join: false });
    const ctx = await newContext(browser, { viewport: { width: 1200, height: 700 } });
    const page = await ctx.newPage();
    pages.push({ name: 'erin-again', page, context: ctx, logs: [] });
    await page.goto(`${server.base}/`);
    await axeCheck(page, 'landing');
    await page.fill('#name', 'erin');
    await page.click('#connect');
    const taken = await waitFor(async () => {
      const t = await visibleText(page, '#name-error');
      return (t && /taken/.test(t) && await page.isVisible('#connect-form')) || `name error: ${t}`;
    }, 8000);
    const log = await page.evaluate(() => document.getElementById('messages').textContent);
    check('a taken name is reported at the name field, in plain words, with no close code', taken.ok && !/code 10/.test(log),
      taken.ok ? await visibleText(page, '#name-error') : taken.reason);
    check('the name field is marked invalid', await page.getAttribute('#name', 'aria-invalid') === 'true');
    await axeCheck(page, 'landing with name error');

    // server_name and the lobby.
    const header = await erin.page.textContent('h1');
    check('server_name (from /server-info) is shown in the header', header.includes('Test Lounge'), header);
    const privacy = await visibleText(erin.page, '#privacy-note');
    check('the lobby explains what "your IP is hidden" means', !!privacy && /IP is hidden/.test(privacy), privacy);
    await erin.page.click('#preview');
    const level = await waitFor(() => erin.page.evaluate(() => document.getElementById('mic-level').value > 0.01
      || `level ${document.getElementById('mic-level').value}`), 8000, 100);
    const devs = await erin.page.evaluate(() => ['mic-select', 'cam-select'].map((id) => document.getElementById(id).options.length));
    check('lobby preview: the mic level meter moves, microphones and cameras are listed', level.ok && devs.every((n) => n > 1),
      `${level.reason || 'level moved'}; options ${devs.join('/')}`);
    await axeCheck(erin.page, 'chat + lobby preview');
    await docsShot(erin.page, 'screenshot-lobby.png');

    // Listen-only with every permission denied.
    const frank = await openClient(browser, server, 'frank', '', { join: false, initScripts: [denyMedia] });
    await frank.page.click('#join-video');
    const denied = await waitFor(async () => {
      const t = await visibleText(frank.page, '#voice-error');
      return (t && /blocked/.test(t) && /Listen only/.test(t)) || `voice error: ${t}`;
    }, 5000);
    check('denied camera/mic: a plain message points to "Listen only"', denied.ok, denied.ok ? await visibleText(frank.page, '#voice-error') : denied.reason);
    await frank.page.click('#join-listen');
    const listening = await waitFor(() => frank.page.evaluate(() => window.relaychat.inVoice), 8000);
    check('with permissions denied, "Listen only" joins the call', listening.ok, listening.reason);
    await erin.page.click('#join-video');
    const call = [erin, frank];
    const conn = await waitFor(async () => connectedReason(call, await reports(call), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('the listener and a camera user connect through the relay', conn.ok, conn.reason);
    if (conn.ok) {
      const flows = await waitFor(async () => {
        const a = await report(frank);
        await sleep(1000);
        const b = await report(frank);
        return (b.peers.erin.inbound.audio > a.peers.erin.inbound.audio && b.peers.erin.inbound.video > a.peers.erin.inbound.video) || 'not growing';
      }, 8000, 0);
      check('the listener receives audio and video', flows.ok, flows.reason);
    }
    const label = await waitFor(() => erin.page.evaluate(() => document.querySelector('[data-peer="peer:frank"] .media')?.textContent === 'mic off · cam off'
      || document.querySelector('[data-peer="peer:frank"] .media')?.textContent), 5000);
    check('the others see the listener as "mic off · cam off"', label.ok, label.reason);

    // The call UI.
    const speaking = await waitFor(() => frank.page.evaluate(() => document.querySelector('[data-peer="peer:erin"]')?.classList.contains('speaking')), 10_000, 100);
    check('speaking indicator: erin\'s tile lights up at frank while her (fake) microphone beeps', speaking.ok, speaking.reason);
    const big = await frank.page.evaluate(() => {
      const r = document.querySelector('[data-peer="peer:erin"]').getBoundingClientRect();
      const panel = document.getElementById('voice').getBoundingClientRect();
      return { w: Math.round(r.width), h: Math.round(r.height), panel: Math.round(panel.width) };
    });
    check('1:1 call: the other person\'s tile uses the panel\'s width', big.w >= big.panel * 0.85, JSON.stringify(big));
    const tips = await erin.page.evaluate(() => [document.getElementById('mute').title, document.getElementById('camera').title]);
    check('Mute and Camera tooltips name their shortcuts', /\(M\)/.test(tips[0]) && /\(V\)/.test(tips[1]), tips.join(' | '));
    await erin.page.click('h1');   // focus out of any field
    await erin.page.keyboard.press('m');
    await erin.page.keyboard.press('v');
    const keys = await erin.page.evaluate(() => ({ mute: document.getElementById('mute').getAttribute('aria-pressed'),
      cam: document.getElementById('camera').getAttribute('aria-pressed'), tracks: window.relaychat.localTracks }));
    check('shortcuts m and v mute and stop the camera (aria-pressed follows)', keys.mute === 'true' && keys.cam === 'true'
      && keys.tracks.every((t) => t.endsWith(':false')), JSON.stringify(keys));
    await erin.page.keyboard.press('m');
    await erin.page.keyboard.press('v');
    await frank.page.click('[data-peer="peer:erin"] .pin');
    const pinned = await frank.page.evaluate(() => {
      const t = document.querySelector('[data-peer="peer:erin"]');
      return `${t.classList.contains('pinned')}/${t.querySelector('.pin').getAttribute('aria-pressed')}`;
    });
    check('pin: the tile is pinned and its button says aria-pressed="true"', pinned === 'true/true', pinned);
    await frank.page.click('[data-peer="peer:erin"] .pin');

    // Screen share (allow_screen_share is on here): Chromium's fake capture stands in for a screen.
    await erin.page.click('#share');
    const shared = await waitFor(async () => {
      const label = await frank.page.evaluate(() => document.querySelector('[data-peer="peer:erin"] .media')?.textContent);
      const pressed = await erin.page.getAttribute('#share', 'aria-pressed');
      return (/sharing screen/.test(label) && pressed === 'true') || `frank sees "${label}", share aria-pressed=${pressed}`;
    }, 8000);
    check('screen share: the button appears when allowed, and frank sees "sharing screen"', shared.ok, shared.reason);
    if (shared.ok) await erin.page.click('#share');

    // Awareness: people lists, unread count in the title, status after /nick.
    const people = await waitFor(() => erin.page.evaluate(() => {
      const t = document.getElementById('people-list').textContent;
      return (/frank/.test(t) && /erin \(you\)/.test(t) && (t.match(/in call/g) || []).length === 2) || t;
    }), 5000);
    check('erin\'s people list shows who is online and who is in the call', people.ok, people.reason);
    const gina = await openClient(browser, server, 'gina', '', { join: false });
    const before = await waitFor(() => gina.page.evaluate(() => {
      const s = document.getElementById('call-people').textContent;
      return (/erin/.test(s) && /frank/.test(s)) || s;
    }), 5000);
    check('before joining, gina sees who is in the call', before.ok, before.reason);
    await gina.page.evaluate(() => {
      document.hasFocus = () => false;   // as if gina's tab were in the background
      window.dispatchEvent(new Event('blur'));
    });
    await erin.page.fill('#chat-input', 'anyone there?');
    await erin.page.press('#chat-input', 'Enter');
    const title = await waitFor(async () => (/^\(1\) Test Lounge/.test(await gina.page.title())) || gina.page.title(), 5000);
    check('unread count in a background tab\'s title: "(1) Test Lounge · relaychat"', title.ok, title.ok ? await gina.page.title() : title.reason);
    await gina.page.evaluate(() => { delete document.hasFocus; window.dispatchEvent(new Event('focus')); });
    const cleared = await waitFor(async () => (await gina.page.title()) === 'Test Lounge · relaychat' || gina.page.title(), 3000);
    check('the count clears when the tab is looked at again', cleared.ok, cleared.reason);
    await gina.page.fill('#chat-input', '/nick gina2');
    await gina.page.press('#chat-input', 'Enter');
    const nick = await waitFor(async () => (await gina.page.textContent('#status')) === 'online as gina2' || gina.page.textContent('#status'), 5000);
    check('the status follows /nick ("online as gina2")', nick.ok, nick.reason);
    const peopleNick = await waitFor(() => erin.page.evaluate(() => /gina2/.test(document.getElementById('people-list').textContent)), 5000);
    check('the people list follows /nick', peopleNick.ok, peopleNick.reason);
    await axeCheck(erin.page, 'call (desktop)');
    await axeCheck(frank.page, 'call, listen-only');
    await erin.page.emulateMedia({ colorScheme: 'dark' });
    await axeCheck(erin.page, 'call (desktop, dark colour scheme)');
    await erin.page.emulateMedia({ colorScheme: 'light' });
    await erin.page.setViewportSize({ width: 390, height: 780 });
    await sleep(300);
    await axeCheck(erin.page, 'call (phone)');
    await docsShot(erin.page, 'screenshot-phone.png');
  } catch (err) {
    check('scenario 8 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// ---- scenario 9: an unreachable relay, a phone-sized call, an insecure origin ---------------------
// The server advertises its relay at 127.0.0.3, where nothing listens (the relay is bound to
// 127.0.0.1): what a wrong external address or a closed firewall looks like to a browser.
async function scenario9(browser) {
  const server = await startServer({ forceRelay: true, publicHost: '127.0.0.3' });
  try {
    const hana = await openClient(browser, server, 'hana', '', { media: 'audio' });
    const ivan = await openClient(browser, server, 'ivan', '', { media: 'audio' });
    const t0 = Date.now();
    const msg = await waitFor(async () => {
      const t = await visibleText(hana.page, '[data-peer="peer:ivan"] .notice');
      return (t && /Can't reach the relay/.test(t) && /UDP/.test(t) && /TCP/.test(t) && /127\.0\.0\.3/.test(t)) || `notice: ${t}`;
    }, 30_000, 500);
    check('relay unreachable: the tile says so, names the relay and what to check (UDP/TCP 3478, TLS)', msg.ok,
      msg.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s: ${await visibleText(hana.page, '[data-peer="peer:ivan"] .notice')}` : msg.reason);
    await axeCheck(hana.page, 'call, relay unreachable');
    await docsShot(hana.page, 'screenshot-relay-unreachable.png');
  } catch (err) {
    check('scenario 9 (relay) ran to the end', false, err.stack || String(err));
  }
  try {
    // Plain http on a host name (not localhost): browsers give such pages no camera or mic.
    const insecure = await chromium.launch({ executablePath: CHROMIUM, headless: true,
      args: [...LAUNCH_ARGS, ...devArgs, '--host-resolver-rules=MAP chat.insecure.test 127.0.0.1'] });
    server.extraCleanup = () => insecure.close();
    const ctx = await newContext(insecure, { viewport: { width: 1200, height: 700 } });
    const page = await ctx.newPage();
    pages.push({ name: 'insecure', page, context: ctx, logs: [] });
    await page.goto(`http://chat.insecure.test:${server.port}/`);
    await page.fill('#name', 'june');
    await page.click('#connect');
    await page.waitForFunction(() => window.relaychat && window.relaychat.connected, null, { timeout: 10_000 });
    const note = await visibleText(page, '#secure-note');
    const disabled = await page.evaluate(() => [document.getElementById('join-audio').disabled, document.getElementById('join-video').disabled]);
    check('http on a real host name: "calls need HTTPS; ask the operator to enable TLS" before Join, mic/camera joins disabled',
      !!note && /Calls need HTTPS; ask the operator to enable TLS/.test(note) && disabled.every(Boolean), `${note} ${disabled}`);
  } catch (err) {
    check('scenario 9 (insecure origin) ran to the end', false, err.stack || String(err));
  }
  return server;
}

// ---- scenario 11: a call over the IPv6 relay ---------------------------------------------------
// The server listens for TURN on [::1] too and relays on ::1. Both pages are handed only the
// turn:[::1] URLs (an init script filters the iceServers the server sends); Chromium names no
// address family in its Allocate, so `allocation_default_family = "keep"` gives it IPv6 relayed
// addresses. The call can only connect through them: the IPv6 listener, IPv6 allocations, the
// relay-only rebuild of IPv6 candidates (raddr ::) and the data path, in a real browser.
function ipv6TurnOnly() {
  const Native = window.RTCPeerConnection;
  const onlyV6 = (config) => {
    if (!config || !config.iceServers) return config;
    const iceServers = config.iceServers
      .map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => !/^turns?:/.test(u) || /^turns?:\[/.test(u)) }))
      .filter((s) => s.urls.length);
    return { ...config, iceServers };
  };
  const Filtered = function (config, ...rest) { return new Native(onlyV6(config), ...rest); };
  Filtered.prototype = Native.prototype;
  Object.setPrototypeOf(Filtered, Native);
  window.RTCPeerConnection = Filtered;
  const setConfiguration = Native.prototype.setConfiguration;
  Native.prototype.setConfiguration = function (config) { return setConfiguration.call(this, onlyV6(config)); };
}

async function scenario11(browser) {
  const server = await startServer({ forceRelay: true, ipv6: true });
  try {
    const opts = { tap: true, initScripts: [ipv6TurnOnly] };
    const [alice, bob] = [await openClient(browser, server, 'alice', '', opts), await openClient(browser, server, 'bob', '', opts)];
    const all = [alice, bob];
    const v6Urls = await waitFor(async () => {
      const urls = await alice.page.evaluate(() => {
        const pc = window.relaychat.pcs.get('bob');
        return pc ? pc.getConfiguration().iceServers.flatMap((s) => [].concat(s.urls)).filter((u) => /^turns?:/.test(u)) : null;
      });
      return (urls && urls.length > 0 && urls.every((u) => /^turns?:\[::1\]:\d+/.test(u))) || `turn URLs: ${JSON.stringify(urls)}`;
    }, CONNECT_WITHIN_MS);
    check('the server hands out turn:[::1] URLs (and the pages use only those)', v6Urls.ok, v6Urls.reason);
    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('alice and bob connected, relay on both ends of the selected pair', conn.ok, conn.reason);
    if (!conn.ok) return server;
    const local = all.map((e, i) => `${e.name}: ${JSON.stringify(Object.values(reps[i].peers)[0].local)}`);
    const v6Both = all.every((_, i) => Object.values(reps[i].peers).every((p) => p.local.address === '::1' && p.remote.address === '::1'));
    check('both ends of every selected pair are IPv6 relayed addresses (::1)', v6Both, local.join('; '));
    await checkMediaFlows(all);
    for (const e of all) await checkReceivedAddresses(e, '::1');
    const m = await server.metrics();
    check('/metrics relaychat_turn_relayed_bytes_total > 0', m.relaychat_turn_relayed_bytes_total > 0,
      `${m.relaychat_turn_relayed_bytes_total} bytes, ${m.relaychat_turn_allocations_active} allocations`);
  } catch (err) {
    check('scenario 11 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// ---- scenario 10: invite-only ------------------------------------------------------------------
// An invite link opened in a browser gets it in (and out of the address bar); a fresh browser
// without it, or with the spent link, is told why at the name field; a reload of the first page
// gets back in with its member pass, spending no second use.
async function scenario10(browser) {
  const server = await startServer({ forceRelay: true, inviteOnly: true });
  try {
    const link = await server.cli(['invite', '--base-url', server.base, '--expires', '1h', '--uses', '1']);
    const query = link.slice(server.base.length + 1);   // "?invite=..."
    check('relaychat invite prints a link to this server', /^\?invite=i\.[0-9a-f]{16}\./.test(query), link);
    const kim = await openClient(browser, server, 'kim', query, { join: false });
    const stored = await kim.page.evaluate(() => ({ url: location.href, pass: localStorage.getItem('relaychat.pass') || '' }));
    check('the invite link gets kim in, and leaves the address bar', !stored.url.includes('invite='), stored.url);
    check('kim\'s browser keeps a member pass', stored.pass.startsWith('m.'), stored.pass.slice(0, 20));

    const refusedAt = async (q, name) => {
      const context = await newContext(browser, { viewport: { width: 1200, height: 700 } });
      const page = await context.newPage();
      pages.push({ name, page, context, logs: [] });
      await page.goto(`${server.base}/${q}`);
      await page.fill('#name', name);
      await page.click('#connect');
      const shown = await waitFor(async () => (await visibleText(page, '#name-error')) || 'no error shown yet', 10_000);
      return shown.ok ? await visibleText(page, '#name-error') : shown.reason;
    };
    const plain = await refusedAt('', 'lee');
    check('a fresh browser without the link is told at the name field', plain === 'This server is invite-only: open the invite link you were given.', plain);
    const spent = await refusedAt(query, 'max');
    check('a fresh browser with the spent link is told it was used', /already been used/.test(spent), spent);

    await kim.page.reload();
    await kim.page.fill('#name', 'kim');
    await kim.page.click('#connect');
    const back = await kim.page.locator('#messages li', { hasText: 'kim has joined.' }).first().waitFor({ timeout: 10_000 }).then(() => true, (e) => e.message);
    check('kim reloads and is still let in (member pass)', back === true, String(back));
    const list = await server.cli(['invite', '--list']);
    check('the reload spent no second use', /used 1\/1/.test(list), list);
  } catch (err) {
    check('scenario 10 ran to the end', false, err.stack || String(err));
  }
  return server;
}

// ---- main ------------------------------------------------------------------------------------
async function main() {
  await mkdir(OUT_DIR, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...LAUNCH_ARGS, ...devArgs] });
  console.log(`chromium ${browser.version()}; server ${BIN}`);
  const scenarios = [
    [1, 'scenario 1: force_relay on, three pages with audio+video', scenario1],
    [2, 'scenario 2: force_relay on, bob misconfigured with iceTransportPolicy "all"', scenario2],
    [3, 'scenario 3: force_relay off', scenario3],
    [4, 'scenario 4: authentication mode, phone-sized page, chat only', scenario4],
    [5, 'scenario 5: 8 s TURN credentials, pushed refresh, ICE restart after expiry', scenario5],
    [6, 'scenario 6: Firefox and Chromium in a relay-only call (E2E_FIREFOX=1)', scenario6],
    [7, 'scenario 7: server restart mid-call: reconnect, rejoin, ICE restart; offline controls', scenario7],
    [8, 'scenario 8: lobby, taken name, listen-only with denied permissions, call UI, awareness, axe', scenario8],
    [9, 'scenario 9: relay unreachable message; insecure origin', scenario9],
    [10, 'scenario 10: invite-only: link opened, refused without it, reload keeps the member pass', scenario10],
    [11, 'scenario 11: a relay-only call over the IPv6 relay (turn:[::1], relay_ip6 = ::1)', scenario11],
    [12, 'scenario 12: cluster: three nodes on one Redis, alice/bob/carol one per node, relay to relay (cluster.mjs)', scenario12],
  ];
  for (const [n, title, run] of scenarios) {
    if (!ONLY.includes(n)) continue;
    scenarioName = `scenario ${n}`;
    console.log(`\n${title}`);
    const failedBefore = results.filter((r) => !r.ok).length;
    let server = null;
    try {
      server = await run(browser);
    } catch (err) {
      check(`${scenarioName} set up`, false, err.message);
      server = err.server || null;
    }
    if (results.filter((r) => !r.ok).length > failedBefore) dumpDiagnostics(server);
    for (const e of pages.splice(0)) await e.context.close().catch(() => {});
    if (server && server.extraCleanup) await server.extraCleanup().catch(() => {});
    if (server) await server.stop();
  }
  await browser.close();

  if (axeScans.length) console.log(`\naxe-core: ${axeScans.length} states scanned, serious/critical violations: ${axeScans.reduce((n, a) => n + a.bad, 0)}`);
  const failed = results.filter((r) => !r.ok);
  console.log(`\ne2e: ${results.length - failed.length} passed, ${failed.length} failed`);
  for (const f of failed) console.log(`  FAILED ${f.scenario}: ${f.name}${f.detail ? ' — ' + f.detail : ''}`);
  process.exitCode = failed.length ? 1 : 0;
}

function dumpDiagnostics(server) {
  for (const e of pages) {
    console.log(`\n----- console of ${e.name} (${e.logs.length} lines) -----`);
    for (const l of e.logs.slice(-200)) console.log(`  ${l}`);
  }
  if (server) {
    console.log(`\n----- server log tail (${server.exited || 'running'}) -----`);
    for (const l of server.log.slice(-120)) console.log(`  ${l}`);
  }
}

// Run only when started as a program; tests/e2e/capture-fixtures.mjs imports the helpers above.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(err);
    dumpDiagnostics(null);
    process.exit(1);
  });
}

// Captures what real Chromium sends over relaychat's signaling channel, as fixtures for the
// relay-only sanitizer's unit tests (issue 11, "Proof"). Writes tests/fixtures/chromium/*.json;
// tests/fixtures/chromium/README.md says what each file holds.
//
// The server runs with force_relay OFF, so it forwards everything unchanged and the files hold
// exactly what the browsers sent: their own addresses included (that is the point: these are the
// sanitizer's attack input). Two pages, alice and bob, each with the same ICE policy and media,
// for every combination of
//   policy          "relay" | "all"   (the page's iceTransportPolicy, via ?forcePolicy=)
//   media           "audio" | "video" (#join-audio | #join-video)
//   relay_transport "udp"   | "tcp"   (udp: the iceServers as the server gives them, TURN over
//                                      UDP and TCP; tcp: only the ?transport=tcp URL reaches the
//                                      pc, so every relay candidate is allocated over TURN/TCP)
// bob joins second, so he offers; once connected he renegotiates (adds a receive-only audio
// transceiver) so the second offer and answer carry the candidates gathered so far as
// a=candidate lines, with c= naming a default candidate.
//
//   cd tests/e2e && npm ci && node capture-fixtures.mjs
// Environment: RELAYCHAT_BIN, CHROMIUM (as for run.mjs), CAPTURE_ONLY=relay-udp-audio,... (some files).
import { chromium } from 'playwright-core';
import { writeFile, mkdir } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import path from 'node:path';
import {
  startServer, openClient, LAUNCH_ARGS, CHROMIUM, ROOT, waitFor, sleep, reports, connectedReason,
} from './run.mjs';

const OUT = path.join(ROOT, 'tests/fixtures/chromium');
// As in run.mjs scenario 2: the relay allocates on 127.0.0.2, the TURN listener is on
// 127.0.0.1, so a client's own address (raddr 127.0.0.1) is told apart from the relay's.
const RELAY_IP = '127.0.0.2';
const ONLY = process.env.CAPTURE_ONLY ? process.env.CAPTURE_ONLY.split(',') : null;

// Runs in the page before the client: every pc (and every setConfiguration, which credential
// pushes use) sees only the TURN-over-TCP URL, as if UDP to the relay were blocked.
function tcpOnlyTurn() {
  const onlyTcp = (cfg) => (cfg && Array.isArray(cfg.iceServers) ? {
    ...cfg,
    iceServers: cfg.iceServers
      .map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => /^turn:.*[?&]transport=tcp\b/.test(u)) }))
      .filter((s) => s.urls.length > 0),
  } : cfg);
  const Pc = RTCPeerConnection;
  window.RTCPeerConnection = new Proxy(Pc, {
    construct(target, [cfg, ...rest]) { return Reflect.construct(target, [onlyTcp(cfg), ...rest]); },
  });
  const setConfiguration = Pc.prototype.setConfiguration;
  Pc.prototype.setConfiguration = function (cfg) { return setConfiguration.call(this, onlyTcp(cfg)); };
}

// The relay protocols and candidate types a page's pcs gathered, from getStats.
function gathered(entry) {
  return entry.page.evaluate(async () => {
    const relayProtocols = new Set();
    const types = new Set();
    for (const pc of window.relaychat.pcs.values()) {
      (await pc.getStats()).forEach((r) => {
        if (r.type !== 'local-candidate') return;
        types.add(r.candidateType);
        if (r.candidateType === 'relay') relayProtocols.add(r.relayProtocol);
      });
    }
    return { relayProtocols: [...relayProtocols].sort(), types: [...types].sort() };
  });
}

async function captureOne(browser, policy, media, transport) {
  const name = `${policy}-${transport}-${media}`;
  const server = await startServer({ forceRelay: false, relayIp: RELAY_IP });
  const entries = [];
  try {
    const opts = { tap: true, media, initScripts: transport === 'tcp' ? [tcpOnlyTurn] : [] };
    entries.push(await openClient(browser, server, 'alice', `?forcePolicy=${policy}`, opts));
    entries.push(await openClient(browser, server, 'bob', `?forcePolicy=${policy}`, opts));
    const [alice, bob] = entries;
    const conn = await waitFor(async () => connectedReason(entries, await reports(entries), { relayBothEnds: policy === 'relay' }), 30_000);
    if (!conn.ok) throw new Error(`${name}: call did not connect: ${conn.reason}`);

    // Renegotiate once gathering is complete: this offer/answer pair carries every candidate as
    // a=candidate lines (and TURN/TCP allocations, slower than UDP, are in the trickle too).
    const complete = await waitFor(() => Promise.all(entries.map((e) => e.page.evaluate(() => [...window.relaychat.pcs.values()]
      .every((pc) => pc.iceGatheringState === 'complete')))).then((v) => v.every(Boolean) || 'gathering'), 20_000);
    if (!complete.ok) throw new Error(`${name}: ICE gathering did not complete`);
    await bob.page.evaluate(() => window.relaychat.pcs.get('alice').addTransceiver('audio', { direction: 'recvonly' }));
    const settled = await waitFor(() => Promise.all(entries.map((e) => e.page.evaluate((peer) => {
      const pc = window.relaychat.pcs.get(peer);
      return pc.signalingState === 'stable' && pc.connectionState === 'connected'
        && pc.remoteDescription && /a=candidate:/.test(pc.remoteDescription.sdp);
    }, e.name === 'bob' ? 'alice' : 'bob'))).then((v) => v.every(Boolean) || 'renegotiating'), 15_000);
    if (!settled.ok) throw new Error(`${name}: renegotiation did not settle: ${settled.reason}`);
    await sleep(500);

    const got = await Promise.all(entries.map(gathered));
    const protocols = [...new Set(got.flatMap((g) => g.relayProtocols))].sort();
    if (transport === 'tcp' && protocols.join() !== 'tcp') throw new Error(`${name}: relay protocols ${protocols} (want tcp only)`);
    if (transport === 'udp' && !protocols.includes('udp')) throw new Error(`${name}: no relay candidate over UDP (${protocols})`);

    const descriptions = [];
    const candidates = [];
    for (const e of entries) {
      for (const raw of await e.page.evaluate(() => window.__sent)) {
        const m = JSON.parse(raw);
        if (m.type === 'webrtc-offer') descriptions.push({ from: e.name, to: m.targetUsername, description: m.offer });
        if (m.type === 'webrtc-answer') descriptions.push({ from: e.name, to: m.targetUsername, description: m.answer });
        if (m.type === 'webrtc-ice-candidate') candidates.push({ from: e.name, to: m.targetUsername, candidate: m.candidate });
      }
    }
    const fixture = {
      chromium: browser.version(),
      policy,
      media,
      relay_transport: transport,
      relay_protocols: protocols,
      candidate_types: [...new Set(got.flatMap((g) => g.types))].sort(),
      relay_ip: RELAY_IP,
      turn_listen_ip: '127.0.0.1',
      // This machine's own addresses: any of them (or 127.0.0.1) outside a relay candidate's
      // connection address is what a sanitizer must remove.
      machine_addresses: Object.values(networkInterfaces()).flat().map((i) => i.address).sort(),
      descriptions,
      candidates,
    };
    const file = path.join(OUT, `${name}.json`);
    await writeFile(file, JSON.stringify(fixture, null, 1) + '\n');
    console.log(`  ${path.relative(ROOT, file)}: ${descriptions.length} descriptions, ${candidates.length} candidates, relay over ${protocols}, types ${fixture.candidate_types}`);
  } finally {
    for (const e of entries) await e.context.close().catch(() => {});
    await server.stop();
  }
}

async function main() {
  await mkdir(OUT, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: LAUNCH_ARGS });
  console.log(`capturing with chromium ${browser.version()}`);
  try {
    for (const transport of ['udp', 'tcp']) {
      for (const policy of ['relay', 'all']) {
        for (const media of ['audio', 'video']) {
          if (ONLY && !ONLY.includes(`${policy}-${transport}-${media}`)) continue;
          await captureOne(browser, policy, media, transport);
        }
      }
    }
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

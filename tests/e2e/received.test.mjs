// Unit tests of the received-address audit (received.mjs): `node --test tests/e2e/`.
// The browser scenarios only ever see it pass; these pin that it fails on what it must catch,
// in particular, in a cluster, a sender's candidate that names another node's relay.
import test from 'node:test';
import assert from 'node:assert/strict';
import { auditCandidate, auditSdp, receivedAddressChecks } from './received.mjs';

const relayLine = (ip, raddr = '0.0.0.0') => `candidate:1 1 udp 41885439 ${ip} 50000 typ relay raddr ${raddr} rport 0 generation 0`;

test('a candidate must name one of the allowed relays, with a placeholder raddr', () => {
  assert.deepEqual(auditCandidate(relayLine('127.0.0.12'), '127.0.0.12'), []);
  assert.deepEqual(auditCandidate(relayLine('127.0.0.12'), new Set(['127.0.0.11', '127.0.0.12'])), []);
  assert.deepEqual(auditCandidate(relayLine('127.0.0.13'), new Set(['127.0.0.11', '127.0.0.12'])),
    [{ field: 'candidate connection address (typ relay)', value: '127.0.0.13' }]);
  assert.deepEqual(auditCandidate(relayLine('127.0.0.12', '127.0.0.1'), '127.0.0.12'),
    [{ field: 'candidate raddr (typ relay)', value: '127.0.0.1' }]);
  assert.equal(auditCandidate('candidate:garbage', '127.0.0.12')[0].field, 'candidate (unparsable)');
});

test('SDP: o=, c= and a=candidate lines are held to the relay set', () => {
  const sdp = (c, cand) => `v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\nc=IN IP4 ${c}\r\na=${relayLine(cand)}\r\n`;
  assert.deepEqual(auditSdp(sdp('0.0.0.0', '127.0.0.11'), new Set(['127.0.0.11'])), []);
  assert.deepEqual(auditSdp(sdp('192.0.2.7', '127.0.0.11'), '127.0.0.11'), [{ field: 'c= connection-address', value: '192.0.2.7' }]);
  assert.deepEqual(auditSdp(sdp('0.0.0.0', '127.0.0.13'), '127.0.0.11'),
    [{ field: 'candidate connection address (typ relay)', value: '127.0.0.13' }]);
});

// A page entry whose taps recorded these frames (what received.mjs reads through page.evaluate).
function fakePage(recv, added, remoteSdps) {
  return { name: 'alice', page: { evaluate: async () => ({ sent: [], recv: recv.map((m) => JSON.stringify(m)), added, remoteSdps }) } };
}
const sdpOf = (ip) => `v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\nc=IN IP4 0.0.0.0\r\na=${relayLine(ip)}\r\n`;
const frames = (bobIp) => [
  { type: 'webrtc-ice-candidate', fromUsername: 'bob', candidate: { candidate: relayLine(bobIp), sdpMid: '0', sdpMLineIndex: 0 } },
  { type: 'webrtc-offer', fromUsername: 'bob', offer: { type: 'offer', sdp: sdpOf(bobIp) } },
];
const added = (ip) => [{ init: { candidate: relayLine(ip) }, address: ip, relatedAddress: '0.0.0.0', type: 'relay' }];
const relays = new Map([['bob', '127.0.0.12'], ['carol', '127.0.0.13']]);

test('cluster: every check passes when each sender names its own node\'s relay', async () => {
  const entry = fakePage(frames('127.0.0.12'), added('127.0.0.12'), [{ type: 'offer', sdp: sdpOf('127.0.0.12') }]);
  const checks = await receivedAddressChecks(entry, relays);
  assert.equal(checks.length, 4);
  assert.deepEqual(checks.filter((c) => !c.ok), []);
});

test('cluster: a candidate from bob naming carol\'s relay fails, though that address is a relay', async () => {
  const entry = fakePage(frames('127.0.0.13'), added('127.0.0.13'), [{ type: 'offer', sdp: sdpOf('127.0.0.13') }]);
  const checks = await receivedAddressChecks(entry, relays);
  const failed = checks.filter((c) => !c.ok);
  assert.equal(failed.length, 2, JSON.stringify(checks));
  assert.match(failed[0].name, /trickled candidate/);
  assert.match(failed[0].detail, /from bob: 127\.0\.0\.13/);
  assert.match(failed[1].name, /received SDP/);
});

test('a sender the map does not name may send no address at all', async () => {
  const entry = fakePage([{ ...frames('127.0.0.12')[0], fromUsername: 'mallory' }], added('127.0.0.12'), []);
  const trickle = (await receivedAddressChecks(entry, relays)).find((c) => /trickled/.test(c.name));
  assert.equal(trickle.ok, false);
  assert.match(trickle.detail, /from mallory: 127\.0\.0\.12/);
});

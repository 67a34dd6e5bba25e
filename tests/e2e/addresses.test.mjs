// Unit tests of the NAT test's address scanner (addresses.mjs): `node --test tests/e2e/`.
// A scanner that misses a literal would let a leak pass, one that invents them would fail
// clean runs; both directions are pinned here with lines Chromium really writes.
import test from 'node:test';
import assert from 'node:assert/strict';
import { ipLiterals, scanText, scanFrame, judge } from './addresses.mjs';

const ips = (text) => ipLiterals(text).map((f) => f.ip);

test('IPv4 literals, with or without a port, nothing from look-alikes', () => {
  assert.deepEqual(ips('turn:203.0.113.10:3478?transport=udp'), ['203.0.113.10']);
  assert.deepEqual(ips('raddr 192.168.20.2 rport 5000'), ['192.168.20.2']);
  assert.deepEqual(ips('version 1.2.3, 1.2.3.4.5, 999.1.1.1, 2026-12-02T05:26:40.123Z'), []);
});

test('IPv6 literals, also glued to a word by a colon; never a DTLS fingerprint or a clock', () => {
  assert.deepEqual(ips('c=IN IP6 2001:db8::7'), ['2001:db8::7']);
  assert.deepEqual(ips('raddr :: rport 0'), ['::']);
  assert.deepEqual(ips('a=ice-ufrag:fe80::1'), ['fe80::1']);
  assert.deepEqual(ips('added:2001:db8::1.'), ['2001:db8::1']);
  assert.deepEqual(ips('[2001:db8::2]:3478'), ['2001:db8::2']);
  assert.deepEqual(ips('::ffff:192.168.1.2').sort(), ['192.168.1.2', '::ffff:192.168.1.2']);
  const fp = 'a=fingerprint:sha-256 5E:1A:5F:69:0C:6B:8F:91:E4:3A:52:70:3B:2D:1F:4E:7B:99:A6:1D:0C:33:D1:8B:4E:07:43:DD:AC:F9:48:3B';
  assert.deepEqual(ips(fp), []);
  assert.deepEqual(ips('at 05:26:40.123, mac aa:bb:cc:dd:ee:ff'), []);
});

test('SDP is scanned line by line and each hit names its field', () => {
  const sdp = [
    'v=0', 'o=- 7236602027981856533 3 IN IP4 127.0.0.1', 's=-', 't=0 0',
    'm=audio 64144 UDP/TLS/RTP/SAVPF 111', 'c=IN IP4 192.168.20.2', 'a=rtcp:9 IN IP4 0.0.0.0',
    'a=candidate:62323340 1 udp 58663167 203.0.113.10 64144 typ relay raddr 203.0.113.22 rport 49495 generation 0',
    'a=remote-candidates:1 10.0.0.9 5000',
  ].join('\r\n') + '\r\n';
  const found = scanText(sdp, 'offer', []).map((f) => `${f.ip} ${f.field}`);
  assert.deepEqual(found, [
    '127.0.0.1 SDP o=', '192.168.20.2 SDP c=', '0.0.0.0 SDP a=rtcp',
    '203.0.113.10 candidate connection address', '203.0.113.22 candidate raddr',
    '10.0.0.9 SDP a=remote-candidates',
  ]);
});

test('frames are read as JSON: escaped text is decoded, keys are scanned, paths are named', () => {
  const frame = JSON.stringify({
    type: 'webrtc-ice-candidate',
    candidate: { candidate: 'candidate:1 1 udp 1 203.0.113.10 9 typ relay raddr 0.0.0.0 rport 0', relatedAddress: '192.168.20.2' },
  }).replace('192.168.20.2', '192\\u002e168.20.2');
  const found = scanFrame(frame, []).map((f) => `${f.ip} @ ${f.where}`);
  assert.deepEqual(found, [
    '203.0.113.10 @ webrtc-ice-candidate.candidate.candidate candidate connection address',
    '0.0.0.0 @ webrtc-ice-candidate.candidate.candidate candidate raddr',
    '192.168.20.2 @ webrtc-ice-candidate.candidate.relatedAddress',
  ]);
  assert.deepEqual(scanFrame('{"10.1.2.3": 1}', []).map((f) => f.where), ['frame (key)']);
  assert.deepEqual(scanFrame('not json 10.1.2.3', []).map((f) => f.ip), ['10.1.2.3']);
});

test('judge: only the allowed addresses pass; 127.0.0.1 is tolerated in o= lines alone', () => {
  const allowed = new Set(['203.0.113.10', '0.0.0.0', '::']);
  const findings = scanText('v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nc=IN IP4 127.0.0.1\r\nc=IN IP4 203.0.113.10\r\nc=IN IP6 ::\r\n', 'sdp', []);
  const { leaks, tolerated } = judge(findings, allowed);
  assert.deepEqual(leaks.map((f) => f.field), ['SDP c=']);
  assert.deepEqual(tolerated.map((f) => f.field), ['SDP o=']);
});

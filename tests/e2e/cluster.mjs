// Scenario 12, issue 15's browser proof: a 3-person call with members on 3 cluster nodes in
// Chromium, relay/relay, media flowing through two different relays.
//
// A private redis-server (temporary directory, free loopback port, AOF with fsync on every write,
// no RDB snapshots; never the system service) and three relaychat processes in cluster mode on
// it, force_relay on. Each node's relay allocates on its own loopback address (node 1 on
// 127.0.0.11, node 2 on 127.0.0.12, node 3 on 127.0.0.13; the TURN listeners stay on
// 127.0.0.1, so a client's own address, 127.0.0.1, is none of them). alice's page loads node 1,
// bob's node 2, carol's node 3: each browser gets its TURN credentials from, and allocates on,
// its own node's relay. Checked, for every one of the three pairs from both ends: the selected
// candidate pair is relay/relay, the local relayed address is the page's own node's relay and
// the remote one the other page's node's relay (so each pair's media crosses two different
// relays), inbound audio and video grow in all six directions, every candidate and SDP a page
// received names only its sender's node's relay (received.mjs, the audit of scenarios 2 and 11),
// and every node's /metrics counts relayed bytes on its own relay. Chat in the same pages: one
// message from each, sent at once, seen by all three in the same order.
//
// Imported by run.mjs (E2E_ONLY=12 runs it alone); it imports run.mjs's harness in turn (an
// import cycle ES modules allow: nothing here touches run.mjs's bindings before main() runs).
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startServer, freePort, openClient, check, waitFor, reports, connectedReason, checkMediaFlows,
  checkReceivedAddresses, CONNECT_WITHIN_MS,
} from './run.mjs';

const REDIS_SERVER = process.env.REDIS_SERVER || 'redis-server';
const NODES = 3;
// Node n's relay allocates on 127.0.0.1n: the address tells which node's relay a candidate is on.
const relayIpOf = (n) => `127.0.0.${10 + n}`;
// Short, so the nodes register and learn each other's relays within a second of starting.
const CLUSTER_TIMING = 'presence_ttl_ms = 3000\nheartbeat_ms = 500';
const LOG_TAIL_LINES = 40;   // per node, in the diagnostics of a failed run

// Redis processes still running when this process ends go down with it.
const liveRedis = new Set();
process.on('exit', () => { for (const child of liveRedis) child.kill('SIGKILL'); });

// Answers whether a Redis on 127.0.0.1:port replies +PONG to PING.
function redisPing(port) {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port }, () => socket.write('PING\r\n'));
    let reply = '';
    const done = (ok) => { socket.destroy(); resolve(ok); };
    socket.setTimeout(500, () => done(false));
    socket.on('data', (d) => { reply += d; if (reply.includes('\r\n')) done(reply.startsWith('+PONG')); });
    socket.on('error', () => done(false));
  });
}

// A private redis-server with the durability docs/CLUSTER.md asks for.
async function startRedis() {
  const dir = await mkdtemp(path.join(tmpdir(), 'relaychat-e2e-redis-'));
  const port = await freePort();
  const redis = { dir, port, url: `redis://127.0.0.1:${port}/0`, log: [], exited: null };
  const child = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--daemonize', 'no', '--logfile', ''],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  liveRedis.add(child);
  const onData = (buf) => { for (const l of buf.toString().split('\n')) if (l) redis.log.push(l); };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  child.on('exit', (code, sig) => { redis.exited = `exited with ${code ?? sig}`; liveRedis.delete(child); });
  child.on('error', (err) => { redis.exited = `failed to start: ${err.message} (apt-get install redis-server)`; });
  redis.stop = async () => {
    if (!redis.exited) {
      child.kill('SIGTERM');
      await waitFor(() => !!redis.exited, 5000, 50);
      if (!redis.exited) child.kill('SIGKILL');
    }
    if (!process.env.E2E_KEEP) await rm(dir, { recursive: true, force: true });
  };
  const up = await waitFor(async () => (redis.exited ? true : (await redisPing(port)) || 'no PONG yet'), 10_000, 100);
  if (redis.exited || !up.ok) {
    await redis.stop();
    throw new Error(`redis-server did not start on 127.0.0.1:${port} (${redis.exited || up.reason}): ${redis.log.slice(-5).join(' | ')}`);
  }
  console.log(`  redis-server 127.0.0.1:${port} (appendfsync always) in ${dir}`);
  return redis;
}

async function readyz(node) {
  const res = await fetch(`${node.base}/readyz`);
  return res.status === 200 || `/readyz ${res.status}: ${(await res.text()).slice(0, 200)}`;
}

// The cluster as run.mjs's main() sees a server: log (for the diagnostics), stop().
function clusterHandle(redis, nodes) {
  return {
    get exited() {
      const down = nodes.map((n, i) => (n && n.exited ? `node-${i + 1} ${n.exited}` : null)).filter(Boolean);
      if (redis && redis.exited) down.push(`redis ${redis.exited}`);
      return down.join(', ') || null;
    },
    get log() {
      return [
        ...nodes.flatMap((n, i) => [`=== node-${i + 1} (${n.base || 'not started'}) ===`, ...n.log.slice(-LOG_TAIL_LINES)]),
        ...(redis ? ['=== redis-server ===', ...redis.log.slice(-10)] : []),
      ];
    },
    async stop() {
      for (const n of nodes) if (n.stop) await n.stop();
      if (redis) await redis.stop();
    },
  };
}

// One message from each page, sent at the same moment from three nodes: every page must show all
// three, in one and the same order (the cluster's shared log decides it).
async function checkChatAcrossNodes(all) {
  const texts = all.map((e, i) => `hello from ${e.name} on node ${i + 1}`);
  await Promise.all(all.map(async (e, i) => {
    await e.page.fill('#chat-input', texts[i]);
    await e.page.press('#chat-input', 'Enter');
  }));
  const orderOn = (e) => e.page.evaluate((wanted) => [...document.querySelectorAll('#messages li.chat')]
    .map((li) => wanted.find((t) => li.textContent.includes(t))).filter(Boolean), texts);
  let orders = [];
  const seen = await waitFor(async () => {
    orders = await Promise.all(all.map(orderOn));
    const missing = all.map((e, i) => (orders[i].length === texts.length ? null : `${e.name} has ${orders[i].length}/3`)).filter(Boolean);
    return missing.length === 0 || missing.join(', ');
  }, 10_000);
  check('chat across nodes: one message from each of alice/bob/carol reaches all three pages', seen.ok, seen.reason);
  const same = orders.length === all.length && orders.every((o) => o.length === texts.length && o.join('\n') === orders[0].join('\n'));
  check('all three pages show the three messages in the same order', seen.ok && same,
    same ? orders[0].map((t) => t.split(' ')[2]).join(' -> ') : all.map((e, i) => `${e.name}: ${orders[i].join(' / ')}`).join('; '));

  const [, , carol] = all;
  await carol.page.fill('#chat-input', '/list');
  await carol.page.press('#chat-input', 'Enter');
  const list = await waitFor(() => carol.page.evaluate(() => {
    const li = [...document.querySelectorAll('#messages li.system')].find((l) => l.textContent.includes('Online users:'));
    return (!!li && ['alice', 'bob', 'carol'].every((n) => li.textContent.includes(n))) || (li ? li.textContent : 'no answer yet');
  }), 5000);
  check('/list on node 3 names alice (node 1), bob (node 2) and carol', list.ok, list.reason);
}

export async function scenario12(browser) {
  const nodes = [];
  let redis = null;
  const handle = () => clusterHandle(redis, nodes);
  try {
    redis = await startRedis();
    for (let n = 1; n <= NODES; n++) {
      const extraConfig = `[cluster]\nredis_url = "${redis.url}"\nnode_id = "node-${n}"\n${CLUSTER_TIMING}`;
      try {
        nodes.push(await startServer({ forceRelay: true, relayIp: relayIpOf(n), serverName: 'Cluster Lounge', extraConfig }));
      } catch (err) {
        if (err.server) nodes.push(err.server);
        throw err;
      }
    }
    const relayIps = nodes.map((_, i) => relayIpOf(i + 1));
    // Ready = read the shared state; and every node must know every node's relay, or its relay
    // would refuse the others' media and its signaling would drop their relay candidates.
    const ready = await waitFor(async () => {
      for (const [i, node] of nodes.entries()) {
        const r = await readyz(node);
        if (r !== true) return `node-${i + 1}: ${r}`;
        const learned = node.log.some((l) => /relay addresses of the cluster's nodes/.test(l) && relayIps.every((ip) => l.includes(ip)));
        if (!learned) return `node-${i + 1} has not logged all three relay addresses yet`;
      }
      return true;
    }, 15_000, 100);
    check(`three nodes ready on one Redis, each knowing every node's relay (${relayIps.join(', ')})`, ready.ok, ready.reason);
    if (!ready.ok) return handle();

    const names = ['alice', 'bob', 'carol'];
    const all = [];
    for (const [i, name] of names.entries()) all.push(await openClient(browser, nodes[i], name, '', { tap: true }));
    const t0 = Date.now();
    let reps;
    const conn = await waitFor(async () => connectedReason(all, (reps = await reports(all)), { relayBothEnds: true }), CONNECT_WITHIN_MS);
    check('all six pcs connected across three nodes, relay on both ends of every selected pair', conn.ok,
      conn.ok ? `${((Date.now() - t0) / 1000).toFixed(1)} s after carol joined` : conn.reason);

    await checkChatAcrossNodes(all);
    if (!conn.ok) return handle();

    // Each page's TURN URLs name its own node's TURN listener (the page loaded that node; no
    // public_host is set, so the node writes the Host the page used): credentials and allocations
    // come from the page's own node.
    const turnPorts = nodes.map((n) => {
      const line = n.log.find((l) => /turn listening on udp /.test(l));
      return line ? Number(/turn listening on udp [\d.]+:(\d+)/.exec(line)[1]) : null;
    });
    const urlsBad = [];
    const urlsSeen = [];
    for (const [i, e] of all.entries()) {
      const urls = await e.page.evaluate(() => [...window.relaychat.pcs.values()]
        .flatMap((pc) => pc.getConfiguration().iceServers.flatMap((s) => [].concat(s.urls))).filter((u) => /^turns?:/.test(u)));
      const foreign = urls.filter((u) => !new RegExp(`^turns?:127\\.0\\.0\\.1:${turnPorts[i]}(\\?|$)`).test(u));
      if (urls.length === 0 || foreign.length) urlsBad.push(`${e.name}: ${urls.length ? foreign.join(', ') : 'no TURN URL'}`);
      urlsSeen.push(`${e.name} -> :${turnPorts[i]} (${new Set(urls).size} URLs)`);
    }
    check('every page\'s TURN URLs name only its own node\'s TURN listener', turnPorts.every(Boolean) && urlsBad.length === 0,
      urlsBad.length ? urlsBad.join('; ') : urlsSeen.join(', '));

    // Every pair crosses two different relays: the page's own node's and the peer's node's.
    const wrong = [];
    const seenPairs = [];
    for (const [i, e] of all.entries()) {
      for (const [j, peer] of names.entries()) {
        if (j === i) continue;
        const p = reps[i].peers[peer];
        const local = `${p.local.address}:${p.local.port}`;
        const remote = `${p.remote.address}:${p.remote.port}`;
        seenPairs.push(`${e.name}->${peer} ${p.local.relayProtocol || '?'} to node-${i + 1}'s relay, ${local} -> ${remote}`);
        if (p.local.address !== relayIps[i]) wrong.push(`${e.name}->${peer} local ${local} is not node-${i + 1}'s relay ${relayIps[i]}`);
        if (p.remote.address !== relayIps[j]) wrong.push(`${e.name}->${peer} remote ${remote} is not node-${j + 1}'s relay ${relayIps[j]}`);
      }
    }
    check('every selected pair goes from the page\'s own node\'s relay to the peer\'s node\'s relay (two different relays)',
      wrong.length === 0, wrong.length ? wrong.join('; ') : '');
    for (const line of seenPairs) console.log(`    ${line}`);

    const before = await Promise.all(nodes.map((n) => n.metrics()));
    const t1 = Date.now();
    await checkMediaFlows(all);
    const after = await Promise.all(nodes.map((n) => n.metrics()));
    const seconds = (Date.now() - t1) / 1000;
    const perNode = nodes.map((_, i) => {
      const grew = after[i].relaychat_turn_relayed_bytes_total - before[i].relaychat_turn_relayed_bytes_total;
      return { grew, allocations: after[i].relaychat_turn_allocations_active };
    });
    check('every node\'s /metrics: relayed bytes grow on its own relay while the call runs, with allocations of its own user',
      perNode.every((m) => m.grew > 0 && m.allocations > 0),
      perNode.map((m, i) => `node-${i + 1} ${relayIps[i]}: +${Math.round(m.grew / seconds / 1000)} kB/s relayed, ${m.allocations} allocations`).join('; '));

    check('every node\'s /metrics: Redis up, three nodes alive',
      after.every((m) => m.relaychat_cluster_redis_up === 1 && m.relaychat_cluster_nodes_alive === NODES),
      after.map((m, i) => `node-${i + 1}: redis_up ${m.relaychat_cluster_redis_up}, nodes_alive ${m.relaychat_cluster_nodes_alive}`).join('; '));

    for (const [i, e] of all.entries()) {
      const others = new Map(names.map((n, j) => [n, relayIps[j]]).filter((_, j) => j !== i));
      await checkReceivedAddresses(e, others);
    }

    // carol (node 3) leaves: the pages on nodes 1 and 2 drop her, her node's relay frees every
    // allocation (only her pcs allocated there), and nodes 1 and 2 free the ones their users
    // held for her.
    const [alice, bob, carol] = all;
    await carol.page.click('#leave');
    let m = [];
    const gone = await waitFor(async () => {
      for (const e of [alice, bob]) {
        const r = (await reports([e]))[0];
        if (r.peers.carol) return `${e.name} still has a pc for carol`;
        if (r.tiles.includes('peer:carol')) return `${e.name} still shows carol's tile`;
      }
      m = await Promise.all(nodes.map((n) => n.metrics()));
      const allocs = m.map((x) => x.relaychat_turn_allocations_active);
      return (allocs[2] === 0 && allocs[0] < perNode[0].allocations && allocs[1] < perNode[1].allocations)
        || `allocations per node ${allocs.join('/')} (before ${perNode.map((x) => x.allocations).join('/')})`;
    }, 5000);
    check('carol leaves on node 3: alice and bob drop her; node 3 frees all her allocations, nodes 1 and 2 the ones held for her', gone.ok,
      gone.ok ? `allocations per node ${perNode.map((x) => x.allocations).join('/')} -> ${m.map((x) => x.relaychat_turn_allocations_active).join('/')}` : gone.reason);
    const still = connectedReason([alice, bob], await reports([alice, bob]), { relayBothEnds: true });
    check('alice (node 1) and bob (node 2) stay connected relay to relay', still === true, still === true ? '' : still);
  } catch (err) {
    check('scenario 12 ran to the end', false, err.stack || String(err));
  }
  return handle();
}

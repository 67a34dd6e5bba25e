// relaychat built-in web client: chat over one WebSocket, plus mesh voice/video over WebRTC.
//
// Wire contract: PROTOCOL.md. Every message we send carries the session token.
// All user-controlled text goes through textContent; nothing here ever builds HTML from strings.
//
// Debug / testing URL parameters (harmless for users, used by tests/e2e):
//   ?name=alice          pre-fill the name field and connect at once
//   ?autojoin=audio|video join voice right after connecting (open-mode servers)
//   ?forcePolicy=all|relay  ignore the server's iceTransportPolicy. This simulates a
//                        misconfigured client, so the e2e test can prove the server still
//                        never forwards its host candidates when force_relay is on.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const forcePolicy = ['all', 'relay'].includes(params.get('forcePolicy')) ? params.get('forcePolicy') : null;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), disconnect: $('disconnect'),
    connectForm: $('connect-form'), name: $('name'), app: $('app'), chat: $('chat'),
    authForm: $('auth-form'), authName: $('auth-name'), authPass: $('auth-pass'),
    register: $('register'), authMsg: $('auth-msg'),
    messages: $('messages'), typing: $('typing'), chatForm: $('chat-form'), chatInput: $('chat-input'),
    joinAudio: $('join-audio'), joinVideo: $('join-video'), mute: $('mute'), camera: $('camera'),
    leave: $('leave'), voiceError: $('voice-error'), tiles: $('tiles'), tileTemplate: $('tile-template'),
  };

  // ---- connection state -------------------------------------------------------------------
  let ws = null;
  let token = null;
  let me = null;               // our username as the server knows it
  let heartbeat = null;
  let inbox = Promise.resolve();   // serializes message handling (see connect)
  let lastTypingSent = 0;
  const typers = new Map();    // username -> timeout id

  // ---- voice state ------------------------------------------------------------------------
  const peers = new Map();     // username -> { pc, polite, makingOffer, ignoreOffer, ... }
  const pcs = new Map();       // username -> RTCPeerConnection (test hook view of `peers`)
  const earlyCandidates = new Map(); // candidates from a peer whose offer has not arrived yet
  let localStream = null;
  let inVoice = false;
  let joining = false;
  let rtcConfig = { iceServers: [], iceTransportPolicy: 'all' };
  let statsTimer = null;

  // Test hook (see tests/e2e/run.mjs). Read-only views; the test asserts on real browser state.
  const receivedRemoteCandidates = [];  // every remote candidate string seen, incl. SDP a=candidate lines
  window.relaychat = {
    pcs, receivedRemoteCandidates, forcePolicy,
    offerCollisions: 0,   // glare seen (resolved by perfect negotiation); for tests and debugging
    get me() { return me; }, get inVoice() { return inVoice; },
    get connected() { return !!(ws && ws.readyState === WebSocket.OPEN && token); },
  };

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ ...msg, token }));
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  // ---- chat -------------------------------------------------------------------------------
  function fmtTime(ts) {
    const d = ts ? new Date(ts) : new Date();
    return isNaN(d) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function addMessage(kind, username, text, timestamp) {
    const li = document.createElement('li');
    li.className = kind;
    const time = document.createElement('time');
    time.textContent = fmtTime(timestamp);
    li.append(time);
    if (kind === 'chat') {
      const who = document.createElement('b');
      who.textContent = username + ':';
      li.append(who, ' ');
    }
    const body = document.createElement('span');
    body.textContent = text;   // never innerHTML: chat text is untrusted
    li.append(body);
    // Only auto-scroll when the reader is already at the bottom.
    const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
    ui.messages.append(li);
    if (atBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function renderTyping() {
    const names = [...typers.keys()];
    ui.typing.textContent = names.length === 0 ? ''
      : names.length === 1 ? `${names[0]} is typing…`
      : `${names.slice(0, -1).join(', ')} and ${names.at(-1)} are typing…`;
  }

  function onTyping(username) {
    if (!username || username === me) return;
    clearTimeout(typers.get(username));
    typers.set(username, setTimeout(() => { typers.delete(username); renderTyping(); }, 4000));
    renderTyping();
  }

  function onSystem(text) {
    addMessage('system', null, text);
    if (text.startsWith('Authentication required.')) {
      ui.authForm.hidden = false;
      ui.chat.classList.add('locked');
      setStatus('connecting', 'log in required');
      ui.authName.value = ui.authName.value || ui.name.value;
      ui.authPass.focus();
    } else if (!ui.authForm.hidden) {
      ui.authMsg.textContent = text;   // e.g. "Registered. Please /login." or "Login failed."
    }
    // Keep our own name right after /nick, so polite/impolite roles stay consistent.
    const nick = /^(\S+) is now (\S+)$/.exec(text);
    if (nick && nick[1] === me) me = nick[2];
  }

  ui.chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const content = ui.chatInput.value.trim();
    if (!content) return;
    send({ type: 'chat', content });   // commands like /list go as ordinary chat content
    ui.chatInput.value = '';
  });
  ui.chatInput.addEventListener('input', () => {
    // Throttled: the server rate-limits messages, and one notice per 3 s is plenty.
    const now = Date.now();
    if (ui.chatInput.value && !ui.chatInput.value.startsWith('/') && now - lastTypingSent > 3000) {
      lastTypingSent = now;
      send({ type: 'typing' });
    }
  });

  function sendAuth(cmd) {
    const name = ui.authName.value.trim();
    const pass = ui.authPass.value;
    if (/\s/.test(pass)) { ui.authMsg.textContent = 'Password must not contain spaces.'; return; }
    if (cmd === 'login') me = name;   // confirmed when history arrives
    send({ type: 'chat', content: `/${cmd} ${name} ${pass}` });
  }
  ui.authForm.addEventListener('submit', (e) => { e.preventDefault(); sendAuth('login'); });
  ui.register.addEventListener('click', () => { if (ui.authForm.reportValidity()) sendAuth('register'); });

  // ---- connection -------------------------------------------------------------------------
  function connect(name) {
    me = name;
    token = null;
    setStatus('connecting', 'connecting…');
    ui.connectForm.hidden = true;
    ui.app.hidden = false;
    ui.disconnect.hidden = false;
    ui.messages.replaceChildren();
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const sock = new WebSocket(scheme + location.host + '/?username=' + encodeURIComponent(name));
    ws = sock;
    // Events of a socket we already replaced (quick disconnect + connect) must not touch the UI.
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!msg || typeof msg !== 'object') return;
      // One message at a time, in arrival order: perfect negotiation assumes an offer is fully
      // applied before the next description or candidate from that peer is looked at.
      inbox = inbox.then(() => handle(msg)).catch((err) => console.error('handler', msg.type, err));
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      clearInterval(heartbeat);
      teardownVoice();
      setStatus('offline', 'offline');
      addMessage('system', null, `Disconnected${ev.reason ? ': ' + ev.reason : ''} (code ${ev.code}).`);
      ui.connectForm.hidden = false;
      ui.disconnect.hidden = true;
      ui.authForm.hidden = true;
      ws = null;
    };
  }

  ui.connectForm.addEventListener('submit', (e) => {
    e.preventDefault();
    connect(ui.name.value.trim());
  });
  ui.disconnect.addEventListener('click', () => { if (ws) ws.close(1000, 'bye'); });
  // Leave voice cleanly when the tab goes away, so peers drop our tile at once.
  window.addEventListener('pagehide', () => { if (inVoice) send({ type: 'webrtc-leave' }); });

  async function handle(msg) {
    switch (msg.type) {
      case 'session-token':
        token = msg.token;
        setStatus('online', `online as ${me}`);
        break;
      case 'heartbeat-config':
        clearInterval(heartbeat);
        if (msg.interval > 0) heartbeat = setInterval(() => send({ type: 'ping' }), msg.interval);
        break;
      case 'pong':
        break;
      case 'history':
        // History arrives once we are in (in auth mode: right after a successful /login).
        ui.authForm.hidden = true;
        ui.chat.classList.remove('locked');
        setStatus('online', `online as ${me}`);
        for (const m of msg.messages || []) {
          addMessage(m.type === 'chat' ? 'chat' : 'system', m.username, m.text, m.timestamp);
        }
        if (params.get('autojoin') && !inVoice) joinVoice(params.get('autojoin') === 'video');
        break;
      case 'chat':
        typers.delete(msg.username); renderTyping();
        addMessage('chat', msg.username, msg.text, msg.timestamp);
        break;
      case 'system':
        onSystem(String(msg.text ?? ''));
        break;
      case 'typing':
        onTyping(msg.username);
        break;
      default:
        if (typeof msg.type === 'string' && msg.type.startsWith('webrtc-')) await handleRtc(msg);
    }
  }

  // ---- voice: local media and UI ------------------------------------------------------------
  function showVoiceError(text) {
    ui.voiceError.textContent = text;
    ui.voiceError.hidden = !text;
  }

  function setVoiceButtons() {
    ui.app.classList.toggle('in-call', inVoice);
    ui.joinAudio.hidden = ui.joinVideo.hidden = inVoice || joining;
    ui.leave.hidden = !inVoice;
    ui.mute.hidden = !inVoice;
    const v = localStream && localStream.getVideoTracks()[0];
    ui.camera.hidden = !inVoice || !v;
    const a = localStream && localStream.getAudioTracks()[0];
    ui.mute.textContent = a && !a.enabled ? 'Unmute' : 'Mute';
    ui.camera.textContent = v && !v.enabled ? 'Camera on' : 'Camera off';
  }

  function currentMediaTypes() {
    if (!localStream) return [];
    return localStream.getTracks().filter((t) => t.enabled).map((t) => t.kind);
  }

  function mediaLabel(types) {
    const t = types || [];
    return `${t.includes('audio') ? 'mic on' : 'mic off'} · ${t.includes('video') ? 'cam on' : 'cam off'}`;
  }

  function makeTile(key, name, isLocal) {
    let tile = ui.tiles.querySelector(`[data-peer="${CSS.escape(key)}"]`);
    if (tile) return tile;
    tile = ui.tileTemplate.content.firstElementChild.cloneNode(true);
    tile.dataset.peer = key;
    tile.querySelector('.who').textContent = isLocal ? `${name} (you)` : name;
    const video = tile.querySelector('video');
    if (isLocal) { video.muted = true; tile.classList.add('local'); }
    ui.tiles.append(tile);
    return tile;
  }

  function tileFor(name) { return ui.tiles.querySelector(`[data-peer="${CSS.escape('peer:' + name)}"]`); }

  function setTileMedia(tile, types) {
    if (!tile) return;
    tile.querySelector('.media').textContent = mediaLabel(types);
    tile.classList.toggle('no-video', !(types || []).includes('video'));
  }

  async function joinVoice(withVideo) {
    if (inVoice || joining) return;
    joining = true;
    showVoiceError('');
    setVoiceButtons();
    try {
      // Modest resolution: a mesh uploads one copy per peer.
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: withVideo ? { width: { ideal: 640 }, height: { ideal: 360 } } : false,
      });
    } catch (err) {
      joining = false;
      showVoiceError(`Could not open ${withVideo ? 'camera/microphone' : 'microphone'}: ${err.message}`);
      setVoiceButtons();
      return;
    }
    const tile = makeTile('local', me, true);
    tile.querySelector('video').srcObject = localStream;
    setTileMedia(tile, currentMediaTypes());
    send({ type: 'webrtc-join', mediaTypes: currentMediaTypes() });
    setVoiceButtons();
  }

  function teardownVoice() {
    for (const name of [...peers.keys()]) closePeer(name);
    earlyCandidates.clear();
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    inVoice = joining = false;
    clearInterval(statsTimer);
    statsTimer = null;
    ui.tiles.replaceChildren();
    setVoiceButtons();
  }

  ui.joinAudio.addEventListener('click', () => joinVoice(false));
  ui.joinVideo.addEventListener('click', () => joinVoice(true));
  ui.leave.addEventListener('click', () => { send({ type: 'webrtc-leave' }); teardownVoice(); });

  function toggleTrack(kind) {
    const track = localStream && localStream.getTracks().find((t) => t.kind === kind);
    if (!track) return;
    // track.enabled keeps the negotiated stream (silence / black frames): no renegotiation needed.
    track.enabled = !track.enabled;
    send({ type: 'webrtc-media-change', mediaTypes: currentMediaTypes() });
    setTileMedia(ui.tiles.querySelector('[data-peer="local"]'), currentMediaTypes());
    setVoiceButtons();
  }
  ui.mute.addEventListener('click', () => toggleTrack('audio'));
  ui.camera.addEventListener('click', () => toggleTrack('video'));

  // ---- voice: signaling ---------------------------------------------------------------------
  async function handleRtc(msg) {
    switch (msg.type) {
      case 'webrtc-joined': {
        joining = false;
        inVoice = true;
        const cfg = msg.config || {};
        rtcConfig = {
          iceServers: Array.isArray(cfg.iceServers) ? cfg.iceServers : [],
          iceTransportPolicy: forcePolicy || cfg.iceTransportPolicy || (cfg.forceRelay ? 'relay' : 'all'),
        };
        // Mesh: the newcomer offers to everyone already in the room; they only answer.
        for (const p of msg.participants || []) {
          if (p.username === me) continue;
          setTileMedia(makeTile('peer:' + p.username, p.username, false), p.mediaTypes);
          createPeer(p.username, true);
        }
        if (!statsTimer) statsTimer = setInterval(refreshBadges, 2000);
        setVoiceButtons();
        break;
      }
      case 'webrtc-peer-joined':
        if (inVoice && msg.username !== me) setTileMedia(makeTile('peer:' + msg.username, msg.username, false), msg.mediaTypes);
        break;
      case 'webrtc-peer-left':
        closePeer(msg.username);
        break;
      case 'webrtc-media-changed':
        setTileMedia(tileFor(msg.username), msg.mediaTypes);
        break;
      case 'webrtc-offer':
        if (msg.offer) await onDescription(msg.fromUsername, msg.offer);
        break;
      case 'webrtc-answer':
        if (msg.answer) await onDescription(msg.fromUsername, msg.answer);
        break;
      case 'webrtc-ice-candidate':
        await onRemoteCandidate(msg.fromUsername, msg.candidate);
        break;
      case 'webrtc-credentials':
        // Fresh TURN credentials before the old ones expire: apply to live pcs and future ones.
        if (Array.isArray(msg.iceServers)) {
          rtcConfig = { ...rtcConfig, iceServers: msg.iceServers };
          for (const { pc } of peers.values()) {
            try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: msg.iceServers }); }
            catch (err) { console.warn('setConfiguration failed', err); }
          }
        }
        break;
      case 'webrtc-error':
        showVoiceError(msg.error || 'voice error');
        if (joining) teardownVoice();   // the join was refused: release camera and mic
        break;
    }
  }

  function createPeer(name, initiator) {
    // max-bundle: gather (and so allocate on the TURN relay) for one transport per peer, not one
    // per m-line; the relay's per-user allocation quota assumes that.
    const pc = new RTCPeerConnection({ ...rtcConfig, bundlePolicy: 'max-bundle' });
    // Perfect negotiation roles: both sides agree by comparing names, so glare always resolves.
    const peer = { pc, polite: me < name, makingOffer: false, ignoreOffer: false,
      answerPending: false, pending: [], statsBusy: false };
    peers.set(name, peer);
    pcs.set(name, pc);

    if (localStream) for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
    // The offerer always asks to receive both kinds, so an audio-only joiner still sees video
    // from others without a second negotiation round.
    if (initiator) {
      for (const kind of ['audio', 'video']) {
        if (!localStream || !localStream.getTracks().some((t) => t.kind === kind)) {
          pc.addTransceiver(kind, { direction: 'recvonly' });
        }
      }
    }

    pc.onnegotiationneeded = async () => {
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        send({ type: 'webrtc-offer', targetUsername: name, offer: pc.localDescription.toJSON() });
      } catch (err) {
        console.error('offer to', name, err);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      // null / empty = end of gathering; nothing to tell the peer.
      if (candidate && candidate.candidate) {
        send({ type: 'webrtc-ice-candidate', targetUsername: name, candidate: candidate.toJSON() });
      }
    };
    pc.ontrack = ({ track, streams }) => {
      const tile = makeTile('peer:' + name, name, false);
      const video = tile.querySelector('video');
      const stream = streams[0] || video.srcObject || new MediaStream();
      if (!streams[0] && !stream.getTracks().includes(track)) stream.addTrack(track);
      if (video.srcObject !== stream) video.srcObject = stream;
      video.play().catch(() => {});   // autoplay may need the click that joined; ignore otherwise
    };
    const onState = () => {
      const tile = tileFor(name);
      if (tile) tile.dataset.state = pc.connectionState;
      if (pc.connectionState === 'connected') peer.restartDelay = 0;
      // Recover from a dead path with an ICE restart; only the impolite side starts it, so the
      // two ends do not both restart at once. negotiationneeded then sends the new offer.
      // Backoff: while the relay itself is unreachable every restart fails again.
      // "disconnected" often heals by itself, so it gets a 5 s grace period first.
      const failed = pc.connectionState === 'failed' || pc.iceConnectionState === 'failed';
      const stalled = pc.connectionState === 'disconnected';
      if ((failed || stalled) && !peer.polite && !peer.restartTimer) {
        peer.restartDelay = Math.min(30000, (peer.restartDelay || 500) * 2);
        const delay = stalled && !failed ? Math.max(5000, peer.restartDelay) : peer.restartDelay;
        console.warn(`connection to ${name} ${pc.connectionState}: ICE restart in ${delay} ms`);
        peer.restartTimer = setTimeout(() => {
          peer.restartTimer = null;
          const s = pc.connectionState;
          if (peers.get(name) === peer && (s === 'failed' || s === 'disconnected')) pc.restartIce();
        }, delay);
      }
    };
    pc.onconnectionstatechange = onState;
    pc.oniceconnectionstatechange = onState;

    for (const c of earlyCandidates.get(name) || []) peer.pending.push(c);
    earlyCandidates.delete(name);
    return peer;
  }

  function closePeer(name) {
    const peer = peers.get(name);
    if (peer) { clearTimeout(peer.restartTimer); peer.pc.close(); }
    peers.delete(name);
    pcs.delete(name);
    earlyCandidates.delete(name);
    const tile = tileFor(name);
    if (tile) tile.remove();
  }

  function recordSdpCandidates(sdp) {
    for (const line of String(sdp || '').split(/\r?\n/)) {
      if (line.startsWith('a=candidate:')) receivedRemoteCandidates.push(line.slice(2));
    }
  }

  async function onDescription(from, description) {
    if (!inVoice || !from || from === me) return;
    recordSdpCandidates(description.sdp);
    const peer = peers.get(from) || createPeer(from, false);
    const { pc } = peer;
    // "Perfect negotiation" (W3C WebRTC spec example): the impolite peer ignores a colliding
    // offer, the polite one rolls its own offer back (implicitly, inside setRemoteDescription).
    const readyForOffer = !peer.makingOffer && (pc.signalingState === 'stable' || peer.answerPending);
    const collision = description.type === 'offer' && !readyForOffer;
    if (collision) window.relaychat.offerCollisions++;
    peer.ignoreOffer = !peer.polite && collision;
    if (peer.ignoreOffer) return;
    try {
      peer.answerPending = description.type === 'answer';
      await pc.setRemoteDescription(description);
      peer.answerPending = false;
      // Candidates that raced ahead of the description can be applied now.
      for (const c of peer.pending.splice(0)) await addCandidate(peer, c);
      if (description.type === 'offer') {
        await pc.setLocalDescription();
        send({ type: 'webrtc-answer', targetUsername: from, answer: pc.localDescription.toJSON() });
      }
    } catch (err) {
      peer.answerPending = false;
      console.error('description from', from, err);
    }
  }

  async function addCandidate(peer, candidate) {
    try {
      await peer.pc.addIceCandidate(candidate);
    } catch (err) {
      if (!peer.ignoreOffer) console.warn('addIceCandidate', err);   // expected for ignored offers
    }
  }

  async function onRemoteCandidate(from, candidate) {
    if (!inVoice || !from || !candidate) return;
    if (candidate.candidate) receivedRemoteCandidates.push(candidate.candidate);
    const peer = peers.get(from);
    if (!peer) {
      if (!earlyCandidates.has(from)) earlyCandidates.set(from, []);
      earlyCandidates.get(from).push(candidate);
    } else if (!peer.pc.remoteDescription) {
      peer.pending.push(candidate);
    } else {
      await addCandidate(peer, candidate);
    }
  }

  // ---- privacy badge ------------------------------------------------------------------------
  // Reads the selected candidate pair from getStats. Chromium names it via
  // transport.selectedCandidatePairId; Firefox marks the pair itself (selected / nominated).
  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      stats.forEach((r) => {
        if (r.type === 'candidate-pair' && r.state === 'succeeded' && (r.selected || r.nominated)) pair = pair || r;
      });
    }
    if (!pair) return null;
    return { local: stats.get(pair.localCandidateId), remote: stats.get(pair.remoteCandidateId) };
  }

  async function refreshBadges() {
    for (const [name, peer] of peers) {
      if (peer.statsBusy) continue;
      peer.statsBusy = true;
      try {
        const badge = tileFor(name)?.querySelector('.badge');
        if (!badge) continue;
        const sel = await selectedPair(peer.pc);
        badge.hidden = !sel || !sel.local;
        if (!sel || !sel.local) continue;
        const relayed = sel.local.candidateType === 'relay';
        badge.classList.toggle('ok', relayed);
        badge.classList.toggle('warn', !relayed);
        badge.textContent = relayed ? 'relayed: your IP is hidden' : 'direct: peer may see your IP';
      } catch (err) {
        console.warn('stats', name, err);
      } finally {
        peer.statsBusy = false;
      }
    }
  }
  window.relaychat.selectedPair = selectedPair;
  // Lets the e2e test push a hand-made signaling message (e.g. a leaky host candidate)
  // through this page's real session, as a misbehaving client would.
  window.relaychat.send = send;

  // ---- start --------------------------------------------------------------------------------
  setVoiceButtons();
  if (params.get('name')) {
    ui.name.value = params.get('name');
    connect(ui.name.value.trim());
  }
})();

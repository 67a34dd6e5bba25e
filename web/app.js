// relaychat built-in web client: chat over one WebSocket, plus mesh voice/video over WebRTC.
//
// Wire contract: PROTOCOL.md. Every message we send carries the session token.
// All user-controlled text goes through textContent; nothing here ever builds HTML from strings.
// CSP-friendly: no inline handlers, no eval, styles only through classes or element.style.
//
// Connection life: a lost WebSocket is retried with backoff (1, 2, 4 ... 30 s) behind a banner;
// the new session logs in again (auth mode) and rejoins the call, and the peer connections that
// survived are restarted (ICE restart) instead of rebuilt, so the call resumes by itself.
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

  // Invite-only servers: an invite link (/?invite=TOKEN) is kept in this browser and taken out
  // of the address bar (it should not end up in bookmarks, shared screenshots or history). It is
  // sent on connect until the server hands back a member pass, which replaces it and is sent on
  // every later connect and reconnect, so one invite use is one browser.
  const access = {
    get invite() { return store.get('relaychat.invite'); },
    get pass() { return store.get('relaychat.pass'); },
    query() {
      let q = '';
      if (this.pass) q += '&pass=' + encodeURIComponent(this.pass);
      if (this.invite) q += '&invite=' + encodeURIComponent(this.invite);
      return q;
    },
  };
  const store = {
    get(key) { try { return localStorage.getItem(key) || ''; } catch { return ''; } },
    set(key, value) { try { if (value) localStorage.setItem(key, value); else localStorage.removeItem(key); } catch { /* private mode */ } },
  };
  if (params.get('invite')) {
    store.set('relaychat.invite', params.get('invite'));
    params.delete('invite');
    const rest = params.toString();
    history.replaceState(history.state, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
  }

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), disconnect: $('disconnect'), serverName: $('server-name'),
    banner: $('banner'), bannerText: $('banner-text'), retryNow: $('retry-now'), announcer: $('announcer'),
    connectForm: $('connect-form'), name: $('name'), nameError: $('name-error'), app: $('app'), chat: $('chat'),
    authForm: $('auth-form'), authName: $('auth-name'), authPass: $('auth-pass'),
    login: $('login'), register: $('register'), authMsg: $('auth-msg'),
    peopleSummary: $('people-summary'), peopleList: $('people-list'),
    messages: $('messages'), typing: $('typing'), chatForm: $('chat-form'), chatInput: $('chat-input'),
    send: $('send'), chatNote: $('chat-note'),
    secureNote: $('secure-note'), lobby: $('lobby'), micSelect: $('mic-select'), camSelect: $('cam-select'),
    speakerSelect: $('speaker-select'), speakerLabel: $('speaker-label'), previewVideo: $('preview-video'),
    micLevel: $('mic-level'), preview: $('preview'), privacyNote: $('privacy-note'),
    joinAudio: $('join-audio'), joinVideo: $('join-video'), joinListen: $('join-listen'),
    mute: $('mute'), camera: $('camera'), share: $('share'), leave: $('leave'),
    voiceError: $('voice-error'), callPeople: $('call-people'), tiles: $('tiles'), tileTemplate: $('tile-template'),
  };

  const secure = window.isSecureContext && !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  const canPickSpeaker = typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;

  // ---- connection state -------------------------------------------------------------------
  let ws = null;
  let token = null;
  let me = null;               // our username as the server knows it
  let wantName = null;         // the name we (re)connect with; follows /nick
  let session = false;         // true once a session was fully set up: from then on we reconnect
  let userClosed = false;      // Disconnect clicked: no reconnect
  let lastSystem = '';         // the last system text: tells why the server closed us
  let heartbeat = null;
  let pongWatch = null;
  let inbox = Promise.resolve();   // serializes message handling (see connect)
  let lastTypingSent = 0;
  let authCreds = null;        // kept in memory only, to log in again after a reconnect
  let pendingCreds = null;
  const retry = { attempt: 0, timer: null, tick: null, at: 0, reason: '' };
  const typers = new Map();    // username -> timeout id
  const online = new Set();    // who is connected (from /list, then join/leave/nick notices)
  const inCall = new Set();    // who is in the call (voice notices, webrtc-joined)
  let listPending = false;     // our own silent /list is in flight: its answer is not shown
  let serverInfo = null;
  let unread = 0;
  let reconnects = 0;

  // ---- voice state ------------------------------------------------------------------------
  const peers = new Map();     // username -> { pc, polite, makingOffer, ignoreOffer, ... }
  const pcs = new Map();       // username -> RTCPeerConnection (test hook view of `peers`)
  const earlyCandidates = new Map(); // candidates from a peer whose offer has not arrived yet
  let localStream = null;
  let inVoice = false;
  let joining = false;
  let voiceWanted = null;      // { listenOnly } while we mean to be in the call, across reconnects
  let joinWatch = null;
  let rtcConfig = { iceServers: [], iceTransportPolicy: 'all' };
  let allowScreenShare = false;
  let statsTimer = null;
  let previewStream = null;
  let screenTrack = null;
  let cameraTrack = null;      // the camera track a screen share replaced
  let audioCtx = null;
  const meters = new Map();    // tile key -> { analyser, buf, source }
  let meterTimer = null;
  let offlineSince = 0;

  // Test hook (see tests/e2e/run.mjs). Read-only views; the test asserts on real browser state.
  const receivedRemoteCandidates = [];  // every remote candidate string seen, incl. SDP a=candidate lines
  window.relaychat = {
    pcs, receivedRemoteCandidates, forcePolicy, online, inCall,
    offerCollisions: 0,   // glare seen (resolved by perfect negotiation); for tests and debugging
    get me() { return me; }, get inVoice() { return inVoice; },
    get connected() { return !!(ws && ws.readyState === WebSocket.OPEN && token); },
    get reconnects() { return reconnects; },
    get localTracks() { return localStream ? localStream.getTracks().map((t) => `${t.kind}:${t.readyState}:${t.enabled}`) : []; },
  };

  const isConnected = () => !!(ws && ws.readyState === WebSocket.OPEN && token);

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ ...msg, token })); return true; }
    return false;
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  // A short sentence for screen readers (the visible UI changes on its own).
  function announce(text) {
    ui.announcer.textContent = '';
    setTimeout(() => { ui.announcer.textContent = text; }, 50);
  }

  // ---- title, server name, people -----------------------------------------------------------
  function renderTitle() {
    const name = serverInfo && serverInfo.serverName && String(serverInfo.serverName);
    const base = name && name.toLowerCase() !== 'relaychat' ? `${name} · relaychat` : 'relaychat';
    document.title = unread > 0 ? `(${unread}) ${base}` : base;
  }
  const away = () => document.hidden || !document.hasFocus();
  function seen() { if (unread) { unread = 0; renderTitle(); } }
  window.addEventListener('focus', seen);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) seen(); });

  async function loadServerInfo() {
    try {
      const res = await fetch('/server-info', { cache: 'no-store' });
      if (!res.ok) return;
      serverInfo = await res.json();
    } catch { return; }
    const name = String(serverInfo.serverName || '');
    const shown = name && name.toLowerCase() !== 'relaychat';
    ui.serverName.textContent = shown ? ` · ${name}` : '';
    renderTitle();
    renderPrivacyNote();
    const stats = serverInfo.currentStats || {};
    if (stats.voiceParticipants === 0 && !inVoice) { inCall.clear(); renderPeople(); }
  }

  function renderPrivacyNote() {
    const w = (serverInfo && serverInfo.webrtc) || {};
    const relayOnly = rtcConfig.iceTransportPolicy === 'relay' || w.forceRelay;
    ui.privacyNote.textContent = relayOnly
      ? 'Your IP is hidden: all audio and video goes through this server\'s relay, so people in the call see only the server\'s address, never yours (the server itself still sees it).'
      : 'This server allows direct connections: people in the call may see your IP address. A green "relayed" badge on a tile means that link hides it.';
    if (w.enabled === false) showVoiceError('Voice and video are turned off on this server.');
  }

  function renderPeople() {
    const names = [...online].sort((a, b) => a.localeCompare(b));
    ui.peopleSummary.textContent = `Online · ${names.length}` + (inCall.size ? ` · in call · ${inCall.size}` : '');
    ui.peopleList.replaceChildren(...names.map((n) => {
      const li = document.createElement('li');
      li.textContent = n === me ? `${n} (you)` : n;
      if (inCall.has(n)) {
        const tag = document.createElement('span');
        tag.className = 'in-call-tag';
        tag.textContent = 'in call';
        li.append(' ', tag);
      }
      return li;
    }));
    const others = [...inCall].filter((n) => n !== me);
    ui.callPeople.textContent = inVoice || voiceWanted ? '' : others.length ? `In the call now: ${others.join(', ')}` : 'Nobody is in the call yet.';
  }

  // System notices keep the people lists current between two /list answers.
  function trackPresence(text, live) {
    let m;
    if ((m = /^(\S+) has joined\.$/.exec(text))) { online.add(m[1]); }
    else if ((m = /^(\S+) has left\.( |$)/.exec(text))) { online.delete(m[1]); inCall.delete(m[1]); }
    else if ((m = /^(\S+) is now (\S+)$/.exec(text))) {
      if (online.delete(m[1])) online.add(m[2]);
      if (inCall.delete(m[1])) inCall.add(m[2]);
    } else if ((m = /^(\S+) joined voice chat$/.exec(text))) { inCall.add(m[1]); if (live && m[1] !== me) announce(`${m[1]} joined the call`); }
    else if ((m = /^(\S+) left voice chat$/.exec(text))) { inCall.delete(m[1]); if (live && m[1] !== me) announce(`${m[1]} left the call`); }
    else if ((m = /^(\S+) was (kicked|banned) by/.exec(text))) { online.delete(m[1]); inCall.delete(m[1]); }
    else return;
    renderPeople();
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

  // Texts after which the server closes the socket because of the name: retrying cannot help.
  const NAME_REFUSALS = {
    'Username taken.': 'That name is taken by someone online right now. Pick another one.',
    'Username in use.': 'That account is signed in somewhere else right now.',
    'Illegal username.': 'Names are 3-20 letters, digits, _ or -.',
    'Requirement: 3-20 characters alphanumeric.': 'Names are 3-20 letters, digits, _ or -.',
    'You are banned.': 'This name is banned on this server.',
  };
  // The server's invite refusals are already plain language: shown at the name field as sent.
  // A refused pass or invite is forgotten, so the next invite link opened starts clean.
  const INVITE_REFUSAL = /^(This server is invite-only|This invite|Your access to this server|The server cannot check invites)/;

  function onSystem(text) {
    lastSystem = text;
    if (listPending && text.startsWith('Online users:')) {
      // Our own silent /list after connecting: fills the people list, not the chat log.
      listPending = false;
      online.clear();
      for (const n of text.slice('Online users:'.length).split(',')) {
        const name = n.trim().replace(/^\[B\]/, '');
        if (name) online.add(name);
      }
      for (const n of [...inCall]) if (!online.has(n)) inCall.delete(n);
      renderPeople();
      return;
    }
    if ((NAME_REFUSALS[text] || INVITE_REFUSAL.test(text)) && !session) return;   // shown at the name field when the socket closes
    addMessage('system', null, text);
    trackPresence(text, true);
    if (text.startsWith('Authentication required.')) {
      if (authCreds) { pendingCreds = authCreds; sendLogin(authCreds); return; }   // reconnect: log in again
      ui.authForm.hidden = false;
      setLocked(true);
      setStatus('connecting', 'log in required');
      ui.authName.value = ui.authName.value || ui.name.value;
      ui.authPass.focus();
    } else if (pendingCreds && pendingCreds === authCreds && /^(Login failed\.|Too many failed)/.test(text)) {
      // The saved login no longer works (password changed?): ask again.
      authCreds = pendingCreds = null;
      ui.authForm.hidden = false;
      ui.authMsg.textContent = text;
      setStatus('connecting', 'log in required');
    } else if (!ui.authForm.hidden) {
      ui.authMsg.textContent = text;   // e.g. "Registered. Please /login." or "Login failed."
    }
    // Keep our own name right after /nick, so polite/impolite roles stay consistent and a
    // reconnect uses the new name.
    const nick = /^(\S+) is now (\S+)$/.exec(text);
    if (nick && nick[1] === me) {
      me = wantName = nick[2];
      setStatus('online', `online as ${me}`);
      const local = ui.tiles.querySelector('[data-peer="local"] .who');
      if (local) local.textContent = `${me} (you)`;
    }
  }

  function setLocked(locked) {
    ui.chat.classList.toggle('locked', locked);
    updateControls();
  }

  ui.chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const content = ui.chatInput.value.trim();
    if (!content) return;
    // Only clear the box once the message really left: offline, the text stays for later.
    if (!isConnected() || ui.chat.classList.contains('locked') || !send({ type: 'chat', content })) {
      ui.chatNote.textContent = 'Not sent: you are offline. Your text stays here; press Enter again once reconnected.';
      return;
    }
    ui.chatNote.textContent = '';
    ui.chatInput.value = '';
  });
  ui.chatInput.addEventListener('input', () => {
    // Throttled: the server rate-limits messages, and one notice per 3 s is plenty.
    const now = Date.now();
    if (ui.chatInput.value && !ui.chatInput.value.startsWith('/') && now - lastTypingSent > 3000 && isConnected()) {
      lastTypingSent = now;
      send({ type: 'typing' });
    }
  });

  function sendLogin(creds) {
    send({ type: 'chat', content: `/login ${creds.name} ${creds.pass}` });
    me = creds.name;   // confirmed when history arrives
  }
  function sendAuth(cmd) {
    const name = ui.authName.value.trim();
    const pass = ui.authPass.value;
    if (/\s/.test(pass)) { ui.authMsg.textContent = 'Password must not contain spaces.'; return; }
    if (!isConnected()) { ui.authMsg.textContent = 'Offline: wait for the connection to come back.'; return; }
    if (cmd === 'login') { pendingCreds = { name, pass }; sendLogin(pendingCreds); return; }
    send({ type: 'chat', content: `/${cmd} ${name} ${pass}` });
  }
  ui.authForm.addEventListener('submit', (e) => { e.preventDefault(); sendAuth('login'); });
  ui.register.addEventListener('click', () => { if (ui.authForm.reportValidity()) sendAuth('register'); });

  // ---- connection -------------------------------------------------------------------------
  function showLanding(error) {
    ui.connectForm.hidden = false;
    ui.app.hidden = true;
    ui.disconnect.hidden = true;
    ui.authForm.hidden = true;
    ui.nameError.textContent = error || '';
    ui.nameError.hidden = !error;
    if (error) { ui.name.setAttribute('aria-invalid', 'true'); ui.name.focus(); ui.name.select(); }
    else ui.name.removeAttribute('aria-invalid');
  }

  function clearRetry() {
    clearTimeout(retry.timer);
    clearInterval(retry.tick);
    retry.timer = retry.tick = null;
  }

  function connect(name) {
    clearRetry();
    wantName = me = name;
    token = null;
    lastSystem = '';
    setStatus('connecting', session ? 'reconnecting…' : 'connecting…');
    ui.connectForm.hidden = true;
    ui.app.hidden = false;
    ui.disconnect.hidden = false;
    ui.nameError.hidden = true;
    ui.name.removeAttribute('aria-invalid');
    if (!session) ui.messages.replaceChildren();
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    let sock;
    try {
      sock = new WebSocket(scheme + location.host + '/?username=' + encodeURIComponent(name) + access.query());
    } catch (err) {
      console.warn('WebSocket', err);
      scheduleReconnect();
      return;
    }
    ws = sock;
    updateControls();
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
      onClosed(ev);
    };
  }

  function onClosed(ev) {
    ws = null;
    token = null;
    clearInterval(heartbeat);
    clearTimeout(pongWatch);
    const why = lastSystem;
    if (userClosed) {
      userClosed = false;
      session = false;
      authCreds = null;
      leaveCall();
      setStatus('offline', 'offline');
      showLanding();
      updateControls();
      return;
    }
    // A name problem on the first try belongs at the name field; later (a reconnect after a blip)
    // "taken" most likely means our own old connection is not timed out yet: keep retrying.
    const ghost = session && (why === 'Username taken.' || why === 'Username in use.');
    if (INVITE_REFUSAL.test(why)) {
      if (!/cannot check invites/.test(why)) { store.set('relaychat.pass', ''); store.set('relaychat.invite', ''); }
      session = false;
      leaveCall();
      setStatus('offline', 'offline');
      showLanding(why);
      updateControls();
      return;
    }
    if (NAME_REFUSALS[why] && !ghost) {
      session = false;
      leaveCall();
      setStatus('offline', 'offline');
      showLanding(NAME_REFUSALS[why]);
      updateControls();
      return;
    }
    if (session && !offlineSince) {
      offlineSince = Date.now();
      addMessage('system', null, 'Connection to the server lost. Reconnecting…');
      announce('Connection lost. Reconnecting.');
    }
    callOffline();
    scheduleReconnect(ghost ? 'ghost' : why, ev.code);
  }

  function scheduleReconnect(why = '', code = 0) {
    clearRetry();
    const block = /Try again in (\d+)s/.exec(why || '');
    let delay = Math.min(30, 2 ** retry.attempt);
    if (block) delay = Number(block[1]) + 1;
    // Our ghost holds the name until its heartbeat times out; retrying fast only feeds the churn guard.
    else if (why === 'ghost') delay = Math.max(delay, 20);
    else delay = Math.max(1, Math.round(delay * (0.8 + Math.random() * 0.4)));
    retry.attempt++;
    retry.at = Date.now() + delay * 1000;
    retry.reason = why === 'ghost' ? 'ghost' : block ? 'blocked' : why && /^(Server is full|Too many)/.test(why) ? why : '';
    retry.code = code;
    retry.timer = setTimeout(() => connect(wantName), delay * 1000);
    retry.tick = setInterval(renderBanner, 1000);
    setStatus('offline', 'offline, reconnecting');
    renderBanner();
    updateControls();
  }

  function renderBanner() {
    const left = Math.max(0, Math.ceil((retry.at - Date.now()) / 1000));
    const when = left > 0 ? `retrying in ${left} s` : 'retrying now…';
    const host = location.host;
    let text;
    if (retry.reason === 'ghost') text = `Reconnected, but the server still holds your old connection; ${when}.`;
    else if (retry.reason === 'blocked') text = `The server asked us to wait before reconnecting; ${when}.`;
    else if (retry.reason) text = `${retry.reason} (${when}).`;
    else if (!navigator.onLine) text = `You are offline (no network); ${when}.`;
    else text = `Can't reach the server at ${host}; ${when}.`;
    ui.bannerText.textContent = text;
    ui.banner.hidden = false;
  }

  function onSessionReady() {
    const wasOffline = offlineSince;
    retry.attempt = 0;
    clearRetry();
    ui.banner.hidden = true;
    offlineSince = 0;
    if (wasOffline) {
      reconnects++;
      addMessage('system', null, `Reconnected after ${Math.round((Date.now() - wasOffline) / 1000)} s.`);
      announce('Reconnected.');
    }
    session = true;
    if (pendingCreds) { authCreds = pendingCreds; pendingCreds = null; }
    setStatus('online', `online as ${me}`);
    // Our own /list, silently: the people list starts right, notices keep it so.
    listPending = send({ type: 'chat', content: '/list' });
    // If the answer never comes (rate limit), a /list the user types later must still show.
    setTimeout(() => { listPending = false; }, 5000);
    loadServerInfo();
    if (voiceWanted && !inVoice && !joining) rejoinVoice();
    updateControls();
  }

  ui.connectForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = ui.name.value.trim();
    if (!/^[A-Za-z0-9_-]{3,20}$/.test(name)) {
      showLanding('Names are 3-20 letters, digits, _ or -.');
      return;
    }
    session = false;
    connect(name);
  });
  ui.disconnect.addEventListener('click', () => {
    clearRetry();
    ui.banner.hidden = true;
    if (ws) { userClosed = true; ws.close(1000, 'bye'); }
    else { session = false; authCreds = null; leaveCall(); setStatus('offline', 'offline'); showLanding(); updateControls(); }
  });
  ui.retryNow.addEventListener('click', () => { if (!ws) connect(wantName); });
  window.addEventListener('online', () => { if (!ws && wantName && retry.timer) connect(wantName); });
  window.addEventListener('offline', () => { if (ws) ws.close(4000, 'network down'); });
  // Leave voice cleanly when the tab goes away, so peers drop our tile at once.
  window.addEventListener('pagehide', () => { if (inVoice) send({ type: 'webrtc-leave' }); });

  // A socket can die without a close event (a network blip, a suspended laptop): a ping that
  // gets no pong within 10 s closes it, which starts the reconnect.
  function ping() {
    if (!send({ type: 'ping' })) return;
    clearTimeout(pongWatch);
    const sock = ws;
    pongWatch = setTimeout(() => { if (ws === sock && sock) sock.close(4001, 'no pong'); }, 10_000);
  }

  async function handle(msg) {
    switch (msg.type) {
      case 'session-token':
        token = msg.token;
        setStatus('connecting', `connected as ${me}`);
        break;
      case 'member-pass':
        // In: the pass brings this browser back from now on; the invite is spent.
        if (typeof msg.pass === 'string') { store.set('relaychat.pass', msg.pass); store.set('relaychat.invite', ''); }
        break;
      case 'heartbeat-config':
        clearInterval(heartbeat);
        if (msg.interval > 0) heartbeat = setInterval(ping, msg.interval);
        break;
      case 'pong':
        clearTimeout(pongWatch);
        break;
      case 'history':
        // History arrives once we are in (in auth mode: right after a successful /login).
        ui.authForm.hidden = true;
        ui.messages.replaceChildren();
        inCall.clear();
        for (const m of msg.messages || []) {
          addMessage(m.type === 'chat' ? 'chat' : 'system', m.username, m.text, m.timestamp);
          if (m.type !== 'chat') trackPresence(String(m.text || ''), false);
        }
        online.add(me);
        setLocked(false);
        onSessionReady();
        if (params.get('autojoin') && !inVoice && !voiceWanted) joinVoice(params.get('autojoin') === 'video' ? 'video' : 'audio');
        break;
      case 'chat':
        typers.delete(msg.username); renderTyping();
        addMessage('chat', msg.username, msg.text, msg.timestamp);
        if (msg.username !== me && away()) { unread++; renderTitle(); }
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

  // What needs the server is disabled while offline; what only touches this device (mute,
  // camera, leave) always works, so the camera can always be turned off.
  function updateControls() {
    const up = isConnected() && session;
    document.body.dataset.conn = up ? 'online' : 'offline';
    ui.send.disabled = !up || ui.chat.classList.contains('locked');
    ui.login.disabled = ui.register.disabled = !isConnected();
    for (const b of [ui.joinAudio, ui.joinVideo, ui.joinListen, ui.share]) b.disabled = !up;
    if (!secure) ui.joinAudio.disabled = ui.joinVideo.disabled = true;
    // Offline the Send button is disabled (so Enter does nothing): say why, and that text is kept.
    const note = ui.chatNote.textContent;
    if (!up && (session || offlineSince)) ui.chatNote.textContent = 'Offline: messages cannot be sent right now. What you type stays here.';
    else if (up && /^(Offline|Not sent)/.test(note)) ui.chatNote.textContent = ui.chatInput.value.trim() ? 'Back online: press Enter to send.' : '';
  }

  // ---- voice: lobby (devices, preview, level meter) -------------------------------------------
  async function listDevices() {
    if (!secure || !navigator.mediaDevices.enumerateDevices) return;
    let devices = [];
    try { devices = await navigator.mediaDevices.enumerateDevices(); } catch { return; }
    const fill = (select, kind, noun) => {
      const keep = select.value;
      const opts = [new Option('Default', '')];
      let i = 0;
      for (const d of devices) if (d.kind === kind && d.deviceId && d.deviceId !== 'default') opts.push(new Option(d.label || `${noun} ${++i}`, d.deviceId));
      select.replaceChildren(...opts);
      if ([...select.options].some((o) => o.value === keep)) select.value = keep;
    };
    fill(ui.micSelect, 'audioinput', 'Microphone');
    fill(ui.camSelect, 'videoinput', 'Camera');
    fill(ui.speakerSelect, 'audiooutput', 'Speaker');
  }

  function constraints(kind) {
    const id = (kind === 'audio' ? ui.micSelect : ui.camSelect).value;
    if (kind === 'audio') return id ? { deviceId: { exact: id } } : true;
    // Modest resolution: a mesh uploads one copy per peer.
    return { width: { ideal: 640 }, height: { ideal: 360 }, ...(id ? { deviceId: { exact: id } } : {}) };
  }

  function mediaErrorText(err, what) {
    switch (err && err.name) {
      case 'NotAllowedError': return `Your browser blocked the ${what}. Allow it from the address bar, or choose "Listen only" to join without it.`;
      case 'NotFoundError': case 'OverconstrainedError': return `No ${what} found. Plug one in, pick another device, or choose "Listen only".`;
      case 'NotReadableError': return `The ${what} is busy (another app may be using it). Close that app, or choose "Listen only".`;
      default: return `Could not open the ${what} (${err && err.message ? err.message : err}). You can still choose "Listen only".`;
    }
  }

  function stopPreview() {
    if (previewStream) previewStream.getTracks().forEach((t) => t.stop());
    previewStream = null;
    ui.previewVideo.srcObject = null;
    dropMeter('preview');
    ui.micLevel.value = 0;
    ui.preview.textContent = 'Test mic & camera';
    ui.preview.setAttribute('aria-pressed', 'false');
  }

  async function startPreview() {
    stopPreview();
    showVoiceError('');
    try {
      previewStream = await navigator.mediaDevices.getUserMedia({ audio: constraints('audio'), video: constraints('video') });
    } catch (err) {
      // Camera refused or missing: a mic-only preview still shows the level.
      try { previewStream = await navigator.mediaDevices.getUserMedia({ audio: constraints('audio') }); } catch (err2) {
        showVoiceError(mediaErrorText(err2, 'microphone and camera'));
        return;
      }
      showVoiceError(mediaErrorText(err, 'camera'));
    }
    ui.previewVideo.srcObject = previewStream;
    watchLevel('preview', previewStream);
    ui.preview.textContent = 'Stop test';
    ui.preview.setAttribute('aria-pressed', 'true');
    listDevices();
  }
  ui.preview.addEventListener('click', () => (previewStream ? stopPreview() : startPreview()));
  for (const s of [ui.micSelect, ui.camSelect]) s.addEventListener('change', () => { if (previewStream) startPreview(); });
  ui.speakerSelect.addEventListener('change', applySpeaker);
  function applySpeaker() {
    if (!canPickSpeaker) return;
    for (const v of ui.tiles.querySelectorAll('.tile:not(.local) video')) v.setSinkId(ui.speakerSelect.value).catch(() => {});
  }

  // ---- voice: level meters and the speaking indicator -----------------------------------------
  function watchLevel(key, stream) {
    dropMeter(key);
    if (!stream || !stream.getAudioTracks().length) return;
    try {
      audioCtx = audioCtx || new AudioContext();
      if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
      const source = audioCtx.createMediaStreamSource(stream);
      const analyser = audioCtx.createAnalyser();
      analyser.fftSize = 512;
      source.connect(analyser);
      meters.set(key, { source, analyser, buf: new Uint8Array(analyser.fftSize), hold: 0 });
    } catch (err) {
      console.warn('level meter', err);
      return;
    }
    if (!meterTimer) meterTimer = setInterval(readLevels, 150);
  }

  function dropMeter(key) {
    const m = meters.get(key);
    if (m) { try { m.source.disconnect(); } catch { /* already gone */ } }
    meters.delete(key);
    if (!meters.size) { clearInterval(meterTimer); meterTimer = null; }
  }

  function readLevels() {
    for (const [key, m] of meters) {
      m.analyser.getByteTimeDomainData(m.buf);
      let sum = 0;
      for (const v of m.buf) sum += (v - 128) * (v - 128);
      const rms = Math.sqrt(sum / m.buf.length) / 128;
      if (key === 'preview') { ui.micLevel.value = Math.min(1, rms * 4); continue; }
      // Speaking = level above a floor; held for a moment so the ring does not flicker.
      const tile = ui.tiles.querySelector(`[data-peer="${CSS.escape(key)}"]`);
      if (!tile) continue;
      const track = key === 'local' ? localStream && localStream.getAudioTracks()[0] : null;
      const live = key !== 'local' || (track && track.enabled);
      m.hold = live && rms > 0.02 ? 4 : Math.max(0, m.hold - 1);
      tile.classList.toggle('speaking', m.hold > 0);
    }
  }

  // ---- voice: local media and UI ------------------------------------------------------------
  function showVoiceError(text) {
    ui.voiceError.textContent = text;
    ui.voiceError.hidden = !text;
  }

  function setVoiceButtons() {
    ui.app.classList.toggle('in-call', inVoice || !!voiceWanted);
    const engaged = inVoice || joining || !!voiceWanted;
    ui.lobby.hidden = engaged;
    ui.joinAudio.hidden = ui.joinVideo.hidden = ui.joinListen.hidden = engaged;
    // Leave, mute and camera stay visible whenever we hold a device, online or not.
    ui.leave.hidden = !engaged && !localStream;
    const a = localStream && localStream.getAudioTracks()[0];
    const v = localStream && (cameraTrack || localStream.getVideoTracks()[0]);
    ui.mute.hidden = !a;
    ui.camera.hidden = !v;
    const muted = !!(a && !a.enabled);
    ui.mute.textContent = muted ? 'Unmute' : 'Mute';
    ui.mute.setAttribute('aria-pressed', String(muted));
    ui.mute.title = muted ? 'Unmute microphone (M)' : 'Mute microphone (M)';
    const camOff = !!(v && !v.enabled);
    ui.camera.textContent = camOff ? 'Camera on' : 'Camera off';
    ui.camera.setAttribute('aria-pressed', String(camOff));
    ui.camera.title = camOff ? 'Turn camera on (V)' : 'Turn camera off (V)';
    const canShare = allowScreenShare && secure && !!navigator.mediaDevices.getDisplayMedia;
    ui.share.hidden = !inVoice || !canShare;
    ui.share.textContent = screenTrack ? 'Stop sharing' : 'Share screen';
    ui.share.setAttribute('aria-pressed', String(!!screenTrack));
    renderPeople();
    updateControls();
  }

  function currentMediaTypes() {
    if (!localStream) return [];
    const types = localStream.getTracks().filter((t) => t.enabled && t.readyState === 'live' && t !== screenTrack).map((t) => t.kind);
    if (screenTrack) types.push('screen');
    return types;
  }

  function mediaLabel(types) {
    const t = types || [];
    let label = `${t.includes('audio') ? 'mic on' : 'mic off'} · ${t.includes('video') ? 'cam on' : 'cam off'}`;
    if (t.includes('screen')) label += ' · sharing screen';
    return label;
  }

  function layoutTiles() {
    const tiles = [...ui.tiles.children];
    ui.tiles.dataset.count = String(tiles.length);
    ui.tiles.classList.toggle('has-pinned', tiles.some((t) => t.classList.contains('pinned')));
  }

  function makeTile(key, name, isLocal) {
    let tile = ui.tiles.querySelector(`[data-peer="${CSS.escape(key)}"]`);
    if (tile) return tile;
    tile = ui.tileTemplate.content.firstElementChild.cloneNode(true);
    tile.dataset.peer = key;
    tile.querySelector('.who').textContent = isLocal ? `${name} (you)` : name;
    tile.querySelector('.avatar').textContent = (name || '?').slice(0, 1).toUpperCase();
    const video = tile.querySelector('video');
    const label = isLocal ? 'your own picture' : name;
    const pin = tile.querySelector('.pin');
    pin.setAttribute('aria-label', `Pin ${label}`);
    pin.title = `Pin ${label} (show large)`;
    pin.addEventListener('click', () => {
      const on = !tile.classList.contains('pinned');
      for (const t of ui.tiles.querySelectorAll('.pinned')) { t.classList.remove('pinned'); t.querySelector('.pin').setAttribute('aria-pressed', 'false'); }
      tile.classList.toggle('pinned', on);
      pin.setAttribute('aria-pressed', String(on));
      if (on) ui.tiles.prepend(tile);
      layoutTiles();
    });
    const full = tile.querySelector('.full');
    full.setAttribute('aria-label', `Full screen: ${label}`);
    full.title = `Full screen: ${label} (Esc to exit)`;
    full.addEventListener('click', () => {
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      else if (tile.requestFullscreen) tile.requestFullscreen().catch((err) => console.warn('fullscreen', err));
    });
    if (isLocal) { video.muted = true; tile.classList.add('local'); }
    else if (canPickSpeaker && ui.speakerSelect.value) video.setSinkId(ui.speakerSelect.value).catch(() => {});
    if (isLocal) ui.tiles.prepend(tile); else ui.tiles.append(tile);
    layoutTiles();
    return tile;
  }

  function tileFor(name) { return ui.tiles.querySelector(`[data-peer="${CSS.escape('peer:' + name)}"]`); }

  function setTileMedia(tile, types) {
    if (!tile) return;
    tile.querySelector('.media').textContent = mediaLabel(types);
    tile.classList.toggle('no-video', !(types || []).some((t) => t === 'video' || t === 'screen'));
  }

  function setNotice(name, text) {
    const n = tileFor(name)?.querySelector('.notice');
    if (!n) return;
    if (n.textContent !== text) n.textContent = text;
    n.hidden = !text;
  }

  // kind: 'audio' | 'video' | 'listen'
  async function joinVoice(kind) {
    if (inVoice || joining || !isConnected()) return;
    joining = true;
    showVoiceError('');
    setVoiceButtons();
    let stream = null;
    if (kind !== 'listen') {
      const wantVideo = kind === 'video';
      // Reuse the preview's devices if they fit; otherwise open them now.
      if (previewStream && (!wantVideo || previewStream.getVideoTracks().length)) {
        stream = previewStream;
        previewStream = null;
        if (!wantVideo) stream.getVideoTracks().forEach((t) => { t.stop(); stream.removeTrack(t); });
      } else {
        try {
          stream = await navigator.mediaDevices.getUserMedia({ audio: constraints('audio'), video: wantVideo ? constraints('video') : false });
        } catch (err) {
          joining = false;
          showVoiceError(mediaErrorText(err, wantVideo ? 'camera and microphone' : 'microphone'));
          setVoiceButtons();
          ui.joinListen.focus();
          return;
        }
      }
    }
    stopPreview();
    if (!isConnected()) {   // the connection dropped while the browser asked for permission
      if (stream) stream.getTracks().forEach((t) => t.stop());
      joining = false;
      showVoiceError('Offline: joining needs the server. Try again once reconnected.');
      setVoiceButtons();
      return;
    }
    localStream = stream || new MediaStream();
    voiceWanted = { listenOnly: kind === 'listen' };
    const tile = makeTile('local', me, true);
    tile.querySelector('video').srcObject = localStream;
    setTileMedia(tile, currentMediaTypes());
    watchLevel('local', localStream);
    sendJoin();
    listDevices();
  }

  function sendJoin() {
    joining = true;
    // The server wants at least one type at join; a listener joins with audio and reports
    // "nothing on" right after, so the others see "mic off · cam off".
    const types = currentMediaTypes();
    send({ type: 'webrtc-join', mediaTypes: types.length ? types : ['audio'] });
    clearTimeout(joinWatch);
    joinWatch = setTimeout(() => {
      if (joining && !inVoice && isConnected()) {
        showVoiceError('The server did not confirm the join. Try again, or reload the page.');
        leaveCall();
      }
    }, 15_000);
    setVoiceButtons();
  }

  function rejoinVoice() {
    showVoiceError('');
    sendJoin();
  }

  // Local-only teardown: peers, devices, tiles. Works offline.
  function leaveCall() {
    for (const name of [...peers.keys()]) closePeer(name);
    earlyCandidates.clear();
    stopShare(false);
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    if (cameraTrack) cameraTrack.stop();
    cameraTrack = null;
    localStream = null;
    for (const k of [...meters.keys()]) if (k !== 'preview') dropMeter(k);
    if (inVoice || voiceWanted) announce('You left the call.');
    inVoice = joining = false;
    voiceWanted = null;
    clearTimeout(joinWatch);
    clearInterval(statsTimer);
    statsTimer = null;
    ui.tiles.replaceChildren();
    layoutTiles();
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    inCall.delete(me);
    setVoiceButtons();
  }

  // The server is gone: keep devices and peer connections (they resume with an ICE restart once
  // we are back), drop only what belongs to the dead session.
  function callOffline() {
    if (!inVoice && !joining) { setVoiceButtons(); return; }
    inVoice = joining = false;
    clearTimeout(joinWatch);
    for (const [name, peer] of peers) {
      clearTimeout(peer.restartTimer);
      peer.restartTimer = null;
      setNotice(name, 'Reconnecting to the server…');
    }
    setVoiceButtons();
  }

  ui.joinAudio.addEventListener('click', () => joinVoice('audio'));
  ui.joinVideo.addEventListener('click', () => joinVoice('video'));
  ui.joinListen.addEventListener('click', () => joinVoice('listen'));
  ui.leave.addEventListener('click', () => { send({ type: 'webrtc-leave' }); leaveCall(); showVoiceError(''); });

  function toggleTrack(kind) {
    const track = kind === 'video' ? (cameraTrack || (localStream && localStream.getVideoTracks()[0]))
      : localStream && localStream.getAudioTracks()[0];
    if (!track) return;
    // track.enabled keeps the negotiated stream (silence / black frames): no renegotiation needed.
    track.enabled = !track.enabled;
    send({ type: 'webrtc-media-change', mediaTypes: currentMediaTypes() });
    setTileMedia(ui.tiles.querySelector('[data-peer="local"]'), currentMediaTypes());
    setVoiceButtons();
    announce(kind === 'audio' ? (track.enabled ? 'Microphone on' : 'Microphone muted') : (track.enabled ? 'Camera on' : 'Camera off'));
  }
  ui.mute.addEventListener('click', () => toggleTrack('audio'));
  ui.camera.addEventListener('click', () => toggleTrack('video'));

  // Shortcuts: m mutes, v toggles the camera; never while typing in a field.
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    if (e.key === 'm' || e.key === 'M') { if (!ui.mute.hidden) { e.preventDefault(); toggleTrack('audio'); } }
    else if (e.key === 'v' || e.key === 'V') { if (!ui.camera.hidden) { e.preventDefault(); toggleTrack('video'); } }
  });

  // ---- voice: screen share ------------------------------------------------------------------
  async function startShare() {
    let display;
    try {
      display = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (err) {
      if (err && err.name !== 'NotAllowedError') showVoiceError(`Could not share the screen: ${err.message}`);
      return;
    }
    screenTrack = display.getVideoTracks()[0];
    if (!screenTrack) return;
    screenTrack.addEventListener('ended', () => stopShare(true));
    cameraTrack = localStream.getVideoTracks()[0] || null;
    if (cameraTrack) localStream.removeTrack(cameraTrack);
    localStream.addTrack(screenTrack);
    for (const { pc } of peers.values()) {
      const sender = pc.getSenders().find((s) => s.track && s.track.kind === 'video');
      if (sender) sender.replaceTrack(screenTrack).catch((err) => console.warn('replaceTrack', err));
      else pc.addTrack(screenTrack, localStream);   // renegotiates (negotiationneeded)
    }
    const tile = ui.tiles.querySelector('[data-peer="local"]');
    if (tile) { tile.classList.add('screen'); setTileMedia(tile, currentMediaTypes()); }
    send({ type: 'webrtc-media-change', mediaTypes: currentMediaTypes() });
    setVoiceButtons();
  }

  function stopShare(tell) {
    if (!screenTrack) return;
    const track = screenTrack;
    screenTrack = null;
    track.stop();
    if (localStream) {
      localStream.removeTrack(track);
      if (cameraTrack) localStream.addTrack(cameraTrack);
    }
    for (const { pc } of peers.values()) {
      const sender = pc.getSenders().find((s) => s.track === track);
      if (!sender) continue;
      if (cameraTrack) sender.replaceTrack(cameraTrack).catch(() => {});
      else { try { pc.removeTrack(sender); } catch { /* closed */ } }
    }
    cameraTrack = null;
    const tile = ui.tiles.querySelector('[data-peer="local"]');
    if (tile) { tile.classList.remove('screen'); setTileMedia(tile, currentMediaTypes()); }
    if (tell) send({ type: 'webrtc-media-change', mediaTypes: currentMediaTypes() });
    setVoiceButtons();
  }
  ui.share.addEventListener('click', () => (screenTrack ? stopShare(true) : startShare()));

  // ---- voice: signaling ---------------------------------------------------------------------
  function turnUrls() {
    return rtcConfig.iceServers.flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls])).filter((u) => /^turns?:/.test(String(u)));
  }

  async function handleRtc(msg) {
    switch (msg.type) {
      case 'webrtc-joined': {
        const wasResume = peers.size > 0;
        joining = false;
        inVoice = true;
        clearTimeout(joinWatch);
        const cfg = msg.config || {};
        rtcConfig = {
          iceServers: Array.isArray(cfg.iceServers) ? cfg.iceServers : [],
          iceTransportPolicy: forcePolicy || cfg.iceTransportPolicy || (cfg.forceRelay ? 'relay' : 'all'),
        };
        allowScreenShare = !!cfg.allowScreenShare;
        renderPrivacyNote();
        if (voiceWanted && voiceWanted.listenOnly) send({ type: 'webrtc-media-change', mediaTypes: [] });
        inCall.clear();
        // Connections kept from before a reconnect get the new session's TURN credentials.
        for (const { pc } of peers.values()) {
          try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: rtcConfig.iceServers }); }
          catch (err) { console.warn('setConfiguration', err); }
        }
        const present = new Set();
        for (const p of msg.participants || []) {
          inCall.add(p.username);
          if (p.username === me) continue;
          present.add(p.username);
          setTileMedia(makeTile('peer:' + p.username, p.username, false), p.mediaTypes);
          const old = peers.get(p.username);
          if (old) await resumePeer(p.username, old);
          else createPeer(p.username, true);   // mesh: the newcomer offers to everyone already in
        }
        // Peers from before a server restart that are not back (yet): give them a while.
        for (const name of peers.keys()) {
          if (present.has(name)) continue;
          setNotice(name, `Waiting for ${name} to reconnect…`);
          const peer = peers.get(name);
          clearTimeout(peer.goneTimer);
          peer.goneTimer = setTimeout(() => { if (peers.get(name) === peer && !inCall.has(name)) closePeer(name); }, 30_000);
        }
        if (!statsTimer) statsTimer = setInterval(refreshBadges, 2000);
        announce(wasResume ? 'Back in the call.' : 'You joined the call.');
        setVoiceButtons();
        break;
      }
      case 'webrtc-peer-joined': {
        if (!inVoice || msg.username === me) break;
        inCall.add(msg.username);
        setTileMedia(makeTile('peer:' + msg.username, msg.username, false), msg.mediaTypes);
        // A peer back after a reconnect offers an ICE restart; an offer of ours that never got
        // through (the server was down) must not block it.
        const peer = peers.get(msg.username);
        if (peer) {
          clearTimeout(peer.goneTimer);
          if (peer.pc.signalingState === 'have-local-offer') {
            try { await peer.pc.setLocalDescription({ type: 'rollback' }); } catch (err) { console.warn('rollback', err); }
          }
          Object.assign(peer, { gotRelay: false, gatherDone: false, since: Date.now() });
          setNotice(msg.username, 'Reconnecting…');
        }
        setVoiceButtons();
        break;
      }
      case 'webrtc-peer-left':
        inCall.delete(msg.username);
        closePeer(msg.username);
        setVoiceButtons();
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
      case 'webrtc-error': {
        const text = String(msg.error || 'voice error');
        // A signal to a peer that is between two sessions: it resumes on its own.
        if (text === 'Target user not in voice chat') { console.warn(text); break; }
        showVoiceError(text === 'Voice chat is full (8 maximum)' || /^Voice chat is full/.test(text)
          ? `${text}. Try again when someone leaves.` : text);
        if (joining && !inVoice) leaveCall();   // the join was refused: release camera and mic
        break;
      }
    }
  }

  // Same peer, new session (ours or the server's): fresh TURN credentials, then an ICE restart
  // on the connection we already have, so media resumes without a new call setup.
  async function resumePeer(name, peer) {
    const { pc } = peer;
    clearTimeout(peer.goneTimer);
    clearTimeout(peer.restartTimer);
    peer.restartTimer = null;
    peer.gotRelay = false;
    peer.gatherDone = false;
    peer.since = Date.now();
    if (pc.signalingState === 'have-local-offer') {
      try { await pc.setLocalDescription({ type: 'rollback' }); } catch (err) { console.warn('rollback', err); }
    }
    setNotice(name, 'Reconnecting…');
    pc.restartIce();   // fires negotiationneeded: the offer goes out with new ICE credentials
  }

  function createPeer(name, initiator) {
    // max-bundle: gather (and so allocate on the TURN relay) for one transport per peer, not one
    // per m-line; the relay's per-user allocation quota assumes that.
    const pc = new RTCPeerConnection({ ...rtcConfig, bundlePolicy: 'max-bundle' });
    // Perfect negotiation roles: both sides agree by comparing names, so glare always resolves.
    const peer = { pc, polite: me < name, makingOffer: false, ignoreOffer: false,
      answerPending: false, pending: [], statsBusy: false, gotRelay: false, gatherDone: false,
      since: Date.now(), iceErrors: [] };
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
      if (!isConnected()) return;   // resumePeer restarts once the server is back
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
        if (candidate.type === 'relay' || / typ relay/.test(candidate.candidate)) peer.gotRelay = true;
        send({ type: 'webrtc-ice-candidate', targetUsername: name, candidate: candidate.toJSON() });
      }
    };
    pc.onicecandidateerror = (e) => {
      if (peer.iceErrors.length < 8) peer.iceErrors.push(`${e.url || '?'}: ${e.errorCode} ${e.errorText || ''}`.trim());
    };
    pc.onicegatheringstatechange = () => {
      peer.gatherDone = pc.iceGatheringState === 'complete';
      checkReachability(name, peer);
    };
    pc.ontrack = ({ track, streams }) => {
      const tile = makeTile('peer:' + name, name, false);
      const video = tile.querySelector('video');
      const stream = streams[0] || video.srcObject || new MediaStream();
      if (!streams[0] && !stream.getTracks().includes(track)) stream.addTrack(track);
      if (video.srcObject !== stream) video.srcObject = stream;
      video.play().catch(() => {});   // autoplay may need the click that joined; ignore otherwise
      if (track.kind === 'audio') watchLevel('peer:' + name, stream);
      renderVerification(name);
    };
    pc.onsignalingstatechange = () => {
      if (pc.signalingState === 'stable') updateVerification(name, peer).catch((err) => console.warn('verification code', err));
    };
    const onState = () => {
      const tile = tileFor(name);
      if (tile) tile.dataset.state = pc.connectionState;
      if (pc.connectionState === 'connected') { peer.restartDelay = 0; peer.since = 0; }
      checkReachability(name, peer);
      // Recover from a dead path with an ICE restart; only the impolite side starts it, so the
      // two ends do not both restart at once. negotiationneeded then sends the new offer.
      // Backoff: while the relay itself is unreachable every restart fails again.
      // "disconnected" often heals by itself, so it gets a 5 s grace period first.
      const failed = pc.connectionState === 'failed' || pc.iceConnectionState === 'failed';
      const stalled = pc.connectionState === 'disconnected';
      if ((failed || stalled) && !peer.polite && !peer.restartTimer && inVoice) {
        peer.restartDelay = Math.min(30000, (peer.restartDelay || 500) * 2);
        const delay = stalled && !failed ? Math.max(5000, peer.restartDelay) : peer.restartDelay;
        console.warn(`connection to ${name} ${pc.connectionState}: ICE restart in ${delay} ms`);
        peer.restartTimer = setTimeout(() => {
          peer.restartTimer = null;
          const s = pc.connectionState;
          if (peers.get(name) === peer && inVoice && (s === 'failed' || s === 'disconnected')) pc.restartIce();
        }, delay);
      }
    };
    pc.onconnectionstatechange = onState;
    pc.oniceconnectionstatechange = onState;

    for (const c of earlyCandidates.get(name) || []) peer.pending.push(c);
    earlyCandidates.delete(name);
    return peer;
  }

  // Relay reachability: say on the tile what is wrong and what to check, instead of a black box.
  function checkReachability(name, peer) {
    const { pc } = peer;
    if (!inVoice) return;
    const state = pc.connectionState;
    if (state === 'connected') { setNotice(name, ''); delete tileFor(name)?.dataset.problem; return; }
    const urls = turnUrls().map(String);
    const relayOnly = pc.getConfiguration().iceTransportPolicy === 'relay';
    const where = urls.length ? urls.map((u) => u.replace(/\?transport=/, ' over ')).join(', ') : 'the relay';
    const ports = [...new Set(urls.map((u) => (/:(\d+)(\?|$)/.exec(u) || [])[1]).filter(Boolean))];
    const tls = urls.some((u) => u.startsWith('turns:'));
    const check = `Ask the operator to check that UDP and TCP port ${ports.join('/') || '3478'}${tls ? ' and TLS' : ' (and TLS 5349, if used)'}`
      + ' reach the server from here, and that the relay address it advertises (public_host / external_ip) is right; "relaychat doctor" tests this.';
    const waited = peer.since ? Date.now() - peer.since : 0;
    let text = '';
    if (relayOnly && !peer.gotRelay && (peer.gatherDone || peer.iceErrors.length || waited > 8000)) {
      text = `Can't reach the relay at ${where}. ${check}`;
    } else if (state === 'failed') {
      text = `No media path to ${name} through the relay; retrying. ${check}`;
    } else if (waited > 20_000) {
      text = `Still connecting to ${name} after ${Math.round(waited / 1000)} s. ${check}`;
    } else {
      return;
    }
    setNotice(name, text);
    const tile = tileFor(name);
    if (tile) tile.dataset.problem = peer.gotRelay ? 'path' : 'relay';
  }

  function closePeer(name) {
    const peer = peers.get(name);
    if (peer) { clearTimeout(peer.restartTimer); clearTimeout(peer.goneTimer); peer.pc.close(); }
    peers.delete(name);
    pcs.delete(name);
    earlyCandidates.delete(name);
    dropMeter('peer:' + name);
    const tile = tileFor(name);
    if (tile) tile.remove();
    layoutTiles();
  }

  function recordSdpCandidates(sdp) {
    for (const line of String(sdp || '').split(/\r?\n/)) {
      if (line.startsWith('a=candidate:')) receivedRemoteCandidates.push(line.slice(2));
    }
  }

  const fingerprint = (sdp) => (/^a=fingerprint:(.+)$/m.exec(String(sdp || '')) || [])[1]?.trim() || '';

  // ---- call verification codes --------------------------------------------------------------
  // The media is DTLS-encrypted end to end, but the keys' fingerprints travel through the
  // server, which could swap them and sit in the middle. Both ends derive a short code from the
  // two fingerprints they actually use; if the people compare it over another channel and it
  // matches, no one swapped anything. Scheme (docs/PROTOCOL.md, "Call verification codes"):
  // each side's first a=fingerprint line as "<hash lower-case> <HEX:UPPER>", the two sorted and
  // joined with "\n", SHA-256, first 8 bytes big-endian mod 10^12, twelve digits as
  // "ddd ddd ddd ddd" (about 40 bits: a middleman cannot grind certificates to match it while a
  // call is being set up, as it could for six digits).
  const normalFingerprint = (fp) => {
    const [hash, hex] = String(fp || '').trim().split(/\s+/);
    return hash && hex ? `${hash.toLowerCase()} ${hex.toUpperCase()}` : '';
  };

  async function verificationCode(fpA, fpB) {
    const a = normalFingerprint(fpA);
    const b = normalFingerprint(fpB);
    if (!a || !b || !crypto.subtle) return '';   // crypto.subtle: secure contexts only
    const joined = [a, b].sort().join('\n');
    const digest = new DataView(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(joined)));
    const digits = String(digest.getBigUint64(0) % 1_000_000_000_000n).padStart(12, '0');
    return digits.match(/.../g).join(' ');
  }
  window.relaychat.verificationCode = verificationCode;

  // Recomputed whenever a negotiation settles: an ICE restart or a renegotiation may come with
  // a new description, and a reloaded peer always comes with a new certificate.
  async function updateVerification(name, peer) {
    const { pc } = peer;
    const local = fingerprint(pc.currentLocalDescription?.sdp);
    const remote = fingerprint(pc.currentRemoteDescription?.sdp);
    const code = await verificationCode(local, remote);
    // A later negotiation may have finished first; only the current descriptions' code counts.
    if (peers.get(name) !== peer || local !== fingerprint(pc.currentLocalDescription?.sdp)
        || remote !== fingerprint(pc.currentRemoteDescription?.sdp)) return;
    peer.verification = code;
    renderVerification(name);
  }

  function renderVerification(name) {
    const el = tileFor(name)?.querySelector('.verify');
    if (!el) return;
    const code = peers.get(name)?.verification || '';
    el.hidden = !code;
    el.textContent = code ? `code ${code}` : '';
    el.dataset.code = code;
    const tip = `Compare this code with ${name} over another channel (phone, in person). `
      + 'If it matches, nobody — not even this server — is listening in.';
    el.dataset.tip = tip;
    el.setAttribute('aria-label', code ? `Verification code ${code}. ${tip}` : '');
  }

  async function onDescription(from, description) {
    if (!inVoice || !from || from === me) return;
    recordSdpCandidates(description.sdp);
    let peer = peers.get(from);
    // An offer with a new DTLS identity comes from a fresh page (a reload): start over with it.
    if (peer && description.type === 'offer' && peer.pc.remoteDescription
        && fingerprint(description.sdp) !== fingerprint(peer.pc.remoteDescription.sdp)) {
      const media = tileFor(from)?.querySelector('.media').textContent;
      closePeer(from);
      if (media) makeTile('peer:' + from, from, false).querySelector('.media').textContent = media;
      peer = null;
    }
    // An answer with a new DTLS identity: the other side had dropped our connection (it saw us
    // leave during a network blip) and answered our ICE restart from a fresh one. Start over too.
    if (peer && description.type === 'answer' && peer.pc.remoteDescription
        && fingerprint(description.sdp) !== fingerprint(peer.pc.remoteDescription.sdp)) {
      const media = tileFor(from)?.querySelector('.media').textContent;
      closePeer(from);
      const tile = makeTile('peer:' + from, from, false);
      if (media) tile.querySelector('.media').textContent = media;
      createPeer(from, true);   // negotiationneeded sends a fresh offer
      return;
    }
    peer = peer || createPeer(from, false);
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
        if (!peer.since && pc.connectionState !== 'connected') peer.since = Date.now();
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
      checkReachability(name, peer);   // also catches "still connecting after 20 s"
      if (peer.statsBusy) continue;
      peer.statsBusy = true;
      try {
        const badge = tileFor(name)?.querySelector('.badge');
        if (!badge) continue;
        const sel = peer.pc.connectionState === 'connected' ? await selectedPair(peer.pc) : null;
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
  if (!secure) {
    // Before anyone clicks Join: browsers give no microphone or camera to plain-http pages.
    ui.secureNote.hidden = false;
    ui.lobby.classList.add('insecure');
  }
  if (!canPickSpeaker) { ui.speakerSelect.hidden = true; ui.speakerLabel.hidden = true; }
  setVoiceButtons();
  renderPrivacyNote();
  renderTitle();
  loadServerInfo();
  listDevices();
  if (params.get('name')) {
    ui.name.value = params.get('name');
    connect(ui.name.value.trim());
  }
})();

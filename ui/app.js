// The Blixard dashboard: what `vm status`, `function list`, `node list` and the watch stream show,
// live. Vanilla JS, no build step, no request to any origin but this server's.
//
// Security: the token comes from the URL (#token=..., or ?token=...) and is moved out of the address
// bar at once (kept in this page's history entry, so a reload works); it is sent only in an
// Authorization header to this origin. Every string the API returns (object names are user input)
// is rendered as a text node, never as markup.
'use strict';

(() => {
  // ---- Token and filter --------------------------------------------------------------------------
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  const kept = history.state && typeof history.state.token === 'string' ? history.state.token : '';
  const token = fragment.get('token') || query.get('token') || kept;
  const stack = query.get('stack') || '';
  if (fragment.has('token') || query.has('token')) {
    query.delete('token');
    const rest = query.toString();
    history.replaceState({ token }, '', location.pathname + (rest ? '?' + rest : ''));
  }

  const WINDOW_S = 60;         // the charts' span
  const REFRESH_MS = 1000;     // lists are read again at most this often
  const FALLBACK_MS = 5000;    // and at least this often (busy/warm are live state, not events)
  const PLACEMENTS = 15;       // placement decisions kept on screen
  const PLACEMENT_REASONS = new Set(['Placed', 'ReplicaStarted', 'PrimaryElected',
    'PrimaryPromoted', 'ReplicaFailed']);

  const state = {
    vms: [], functions: [], nodes: [], queues: null, // null: the server has no queues endpoint
    placements: [],
    series: new Map(),   // function name -> {inv: Map<second, n>, cold: Map<second, n>}
    next: 0,             // events: the sequence to follow from
    stopped: false,      // an auth error: nothing more is asked
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message || ('HTTP ' + status));
      this.status = status;
      this.code = code || '';
    }
  }

  async function api(path, init = {}) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    let res;
    try {
      res = await fetch(path, { headers, cache: 'no-store', credentials: 'omit',
        referrerPolicy: 'no-referrer', signal: init.signal });
    } catch (e) {
      throw new ApiError(0, 'unavailable', 'cannot reach the server: ' + e.message);
    }
    if (!res.ok) {
      let body = {};
      try { body = await res.json(); } catch (e) { /* not a Status */ }
      throw new ApiError(res.status, body.code, body.message);
    }
    return res;
  }
  const getJson = async (path) => (await api(path)).json();
  const isAuth = (e) => e instanceof ApiError && (e.status === 401 || e.status === 403);

  // ---- DOM helpers: text nodes only ----------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'title') el.title = String(v);
      else el.setAttribute(k, String(v));   // data-* and the like: an attribute value, not markup
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  // ---- Formatting, as the CLI does ---------------------------------------------------------------
  const int = (v) => { const n = Number(v || 0); return Number.isFinite(n) ? n : 0; };
  const name = (o) => (o.metadata && o.metadata.name) || '';
  function mib(v) {
    const n = int(v);
    if (!n) return '-';
    if (n >= 1024) return String(Math.round(n / 102.4) / 10).replace(/\.0$/, '') + 'G';
    return n + 'M';
  }
  function clock(t) {
    const d = t ? new Date(t) : new Date();
    return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
  }
  function age(seconds) {
    const s = Number(seconds || 0);
    if (!s) return '-';
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    if (s < 3600) return Math.round(s / 60) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }
  const inStack = (o) => !stack || (o.metadata && o.metadata.stack) === stack;

  // ---- Views -------------------------------------------------------------------------------------
  function fill(tbody, rows, cols, empty) {
    tbody.replaceChildren(...(rows.length ? rows
      : [h('tr', {}, h('td', { colspan: cols, class: 'empty' }, empty))]));
  }

  // Instances running (Busy) and warm per node, as `function list` counts them.
  function perNode(fn) {
    const by = new Map();
    for (const i of (fn.status && fn.status.instances) || []) {
      if (!i.node || i.phase === 'Stopping') continue;
      const n = by.get(i.node) || { running: 0, warm: 0, starting: 0 };
      if (i.phase === 'Busy') n.running++;
      else if (i.phase === 'Warm') n.warm++;
      else n.starting++;
      by.set(i.node, n);
    }
    return new Map([...by.entries()].sort((a, b) => a[0].localeCompare(b[0])));
  }

  function renderSummary(vms, fns) {
    const vmText = vms.map((v) => {
      const st = v.status || {};
      return `${name(v)} (${int(st.readyReplicas)}/${int(v.spec && v.spec.replicas)} running)`;
    });
    const fnText = fns.map((f) => {
      const st = f.status || {};
      const nodes = [...perNode(f).keys()];
      let s = `${name(f)} (${int(st.instancesRunning)} running, ${int(st.instancesWarm)} warm`;
      if (nodes.length) s += ` on ${nodes.length > 1 ? 'nodes' : 'node'} ${nodes.join(',')}`;
      return s + ')';
    });
    $('summary').replaceChildren(
      h('p', { id: 'summary-vms' }, h('strong', {}, 'Long-lived VMs: '),
        vmText.length ? vmText.join(', ') : 'none'),
      h('p', { id: 'summary-functions' }, h('strong', {}, 'Serverless functions: '),
        fnText.length ? fnText.join(', ') : 'none'));
  }

  function renderVms(vms) {
    const rows = vms.map((v) => {
      const spec = v.spec || {}, st = v.status || {};
      const replicas = int(spec.replicas);
      const ready = int(st.readyReplicas);
      const instances = (st.instances || []).map((i) => {
        const primary = i.primary || i.role === 'primary' || (st.primary && st.primary === i.name);
        return h('span', { class: 'replica' + (primary ? ' primary' : ''), 'data-replica': i.name,
          'data-node': i.node || '', 'data-phase': i.phase || '' },
        `${i.name} @ ${i.node || '-'} `, h('span', { class: 'phase-' + (i.phase || '') }, i.phase || ''),
        primary ? ' (primary)' : (i.role && i.role !== 'primary' ? ` (${i.role})` : ''));
      });
      return h('tr', { 'data-name': name(v), 'data-ready': ready, 'data-replicas': replicas,
        'data-primary': st.primary || '' },
      h('td', {}, name(v)),
      h('td', { class: 'phase-' + (st.phase || 'Pending') }, st.phase || 'Pending'),
      h('td', { class: 'num ready' }, `${ready}/${replicas}`),
      h('td', { class: 'primary' }, st.primary || '-'),
      h('td', {}, instances.length ? instances : '-'),
      h('td', {}, mib(spec.memory || (spec.microvm && spec.microvm.mem))),
      h('td', { class: 'num' }, spec.vcpu || (spec.microvm && spec.microvm.vcpu) || '-'));
    });
    fill($('vms').tBodies[0], rows, 7, stack ? `No VMs in stack ${stack}.` : 'No VMs.');
  }

  function renderFunctions(fns) {
    const rows = fns.map((f) => {
      const spec = f.spec || {}, st = f.status || {};
      const nodes = perNode(f);
      const where = [...nodes.entries()].map(([node, n]) =>
        h('div', { 'data-node': node, 'data-running': n.running, 'data-warm': n.warm },
          `${node}: ${n.running} running, ${n.warm} warm` + (n.starting ? `, ${n.starting} starting` : '')));
      const series = seriesOf(name(f));
      return h('tr', { 'data-name': name(f), 'data-running': int(st.instancesRunning),
        'data-warm': int(st.instancesWarm) },
      h('td', {}, name(f)),
      h('td', { class: 'num running' }, int(st.instancesRunning)),
      h('td', { class: 'num warm' }, int(st.instancesWarm)),
      h('td', {}, where.length ? where : '-'),
      h('td', {}, mib(spec.memory)),
      h('td', {}, spec.timeout || '-'),
      h('td', { class: 'chart-cell', 'data-chart': 'invocations' }, chart(series.inv, false)),
      h('td', { class: 'chart-cell', 'data-chart': 'cold-starts' }, chart(series.cold, true)));
    });
    fill($('functions').tBodies[0], rows, 8,
      stack ? `No functions in stack ${stack}.` : 'No functions.');
  }

  function renderQueues(queues) {
    const panel = $('queues-panel');
    if (queues === null) { panel.hidden = true; return; }
    panel.hidden = false;
    const rows = queues.map((q) => {
      const st = q.status || {};
      return h('tr', { 'data-name': name(q), 'data-depth': int(st.depth) },
        h('td', {}, name(q)),
        h('td', { class: 'num depth' }, int(st.depth)),
        h('td', { class: 'num' }, int(st.inFlight)),
        h('td', { class: 'num' }, age(st.oldestAgeSeconds)));
    });
    fill($('queues').tBodies[0], rows, 4, 'No queues.');
  }

  function renderNodes(nodes) {
    const rows = nodes.map((n) => {
      const spec = n.spec || {}, st = n.status || {};
      const labels = Object.entries(spec.labels || {}).sort().map(([k, v]) => `${k}=${v}`);
      const state = (st.phase || '') + (st.unschedulable ? ',SchedulingDisabled' : '');
      const memTotal = int(spec.memoryMib), memUsed = int(st.allocatedMemoryMib);
      const cpuTotal = int(spec.vcpu), cpuUsed = int(st.allocatedVcpu);
      return h('tr', { 'data-name': name(n) },
        h('td', {}, name(n)),
        h('td', { class: 'phase-' + (st.phase || '') }, state),
        h('td', {}, spec.address || '-'),
        h('td', {}, h('meter', { min: 0, max: memTotal || 1, value: memUsed }),
          `${mib(memUsed)}/${mib(memTotal)}`),
        h('td', {}, h('meter', { min: 0, max: cpuTotal || 1, value: cpuUsed }),
          `${cpuUsed}/${cpuTotal}`),
        h('td', { class: 'num' }, int(st.instances)),
        h('td', {}, labels.join(',') || '-'));
    });
    fill($('nodes').tBodies[0], rows, 7, 'No nodes.');
  }

  function renderPlacements(names) {
    const shown = state.placements.filter((e) => !names || names.has(e.kind + '/' + e.name));
    const items = shown.slice(-PLACEMENTS).reverse().map((e) =>
      h('li', { 'data-reason': e.reason, 'data-name': e.name, 'data-node': e.node || '' },
        h('span', { class: 'when' }, clock(e.time)), ' ',
        `${e.reason} ${e.kind === 'vms' ? 'vm' : 'function'} ${e.name}`, ' ',
        e.node ? [h('span', { class: 'node' }, '→ ' + e.node), ' '] : '',
        h('span', { class: 'muted' }, e.message || '')));
    $('placements').replaceChildren(...(items.length ? items
      : [h('li', { class: 'empty' }, 'None yet.')]));
  }

  function render() {
    const vms = state.vms.filter(inStack);
    const fns = state.functions.filter(inStack);
    // The server's own queues (event:<trigger>, async:<fn>, their :dead) only while they hold
    // something: two per function would drown the user's own.
    const shown = (q) => inStack(q) &&
      (!name(q).includes(':') || Number((q.status || {}).depth || 0) > 0);
    const queues = state.queues === null ? null : state.queues.filter(shown);
    renderSummary(vms, fns);
    renderVms(vms);
    renderFunctions(fns);
    renderQueues(queues);
    renderNodes(state.nodes);
    renderPlacements(stack ? new Set([...vms.map((v) => 'vms/' + name(v)),
      ...fns.map((f) => 'functions/' + name(f))]) : null);
    $('updated').textContent = 'updated ' + clock();
  }

  // ---- Charts: counts per second over the last minute, drawn as a small SVG line ---------------
  function seriesOf(fn) {
    let s = state.series.get(fn);
    if (!s) { s = { inv: new Map(), cold: new Map() }; state.series.set(fn, s); }
    return s;
  }
  function count(map, second) { map.set(second, (map.get(second) || 0) + 1); }
  function prune(map, oldest) { for (const k of map.keys()) if (k < oldest) map.delete(k); }

  function chart(map, cold) {
    const now = Math.floor(Date.now() / 1000);
    const values = [];
    for (let s = now - WINDOW_S + 1; s <= now; s++) values.push(map.get(s) || 0);
    const max = Math.max(1, ...values);
    const W = 120, H = 24;
    const points = values.map((v, i) =>
      `${(i * W / (WINDOW_S - 1)).toFixed(1)},${(H - 1 - (v / max) * (H - 2)).toFixed(1)}`);
    const total = values.reduce((a, b) => a + b, 0);
    const g = svg('svg', { class: cold ? 'chart cold' : 'chart', width: W, height: H,
      viewBox: `0 0 ${W} ${H}`, role: 'img' });
    const title = svg('title', {});
    title.textContent = `${total} in the last ${WINDOW_S} s (peak ${max}/s)`;
    g.append(title, svg('line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }),
      svg('polyline', { points: points.join(' ') }));
    return [g, h('span', { class: 'rate', 'data-total': total }, `${total}/min`)];
  }

  // ---- Data: the lists, and the event stream that says when to read them again -----------------
  let refreshTimer = null, lastRefresh = 0;
  function scheduleRefresh() {
    if (refreshTimer !== null || state.stopped) return;
    const wait = Math.max(0, lastRefresh + REFRESH_MS - Date.now());
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, wait);
  }

  async function refresh() {
    lastRefresh = Date.now();
    try {
      const [vms, fns, nodes] = await Promise.all(
        ['/v1/vms', '/v1/functions', '/v1/nodes'].map(getJson));
      state.vms = vms.items || [];
      state.functions = fns.items || [];
      state.nodes = nodes.items || [];
      try {
        state.queues = (await getJson('/v1/queues')).items || [];
      } catch (e) {
        if (isAuth(e)) throw e;
        state.queues = null;   // a server without queues: the panel stays hidden
      }
      render();
      if (!$('error').dataset.kind || $('error').dataset.kind === 'transient') showError(null);
    } catch (e) {
      if (isAuth(e)) return authFailed(e);
      showError('Cannot read the cluster: ' + e.message, 'transient');
    }
  }

  function showError(text, kind) {
    const box = $('error');
    box.hidden = !text;
    box.textContent = text || '';
    box.dataset.kind = text ? kind : '';
  }

  function setConn(s, text) {
    const el = $('conn');
    el.dataset.state = s;
    el.textContent = text || s;
  }

  function authFailed(e) {
    state.stopped = true;
    setConn('error', 'not authorised');
    const why = e.status === 403
      ? `This token may not read the cluster (${e.message}).`
      : token
        ? `The server refused this page's token (${e.message}): it may have expired or been ` +
          'revoked. Run `blixard dashboard` again for a new URL.'
        : 'This server needs a token: open the URL `blixard dashboard` prints.';
    showError(why, 'auth');
  }

  function onEvent(e) {
    if (e.sequence !== undefined) state.next = Math.max(state.next, int(e.sequence));
    if (e.type === 'record') {
      const t = Math.min(Date.parse(e.time) || Date.now(), Date.now());
      const second = Math.floor(t / 1000);
      if (e.kind === 'functions' && (e.reason === 'Invoked' || e.reason === 'ColdStart')) {
        const s = seriesOf(e.name);
        count(s.inv, second);
        if (e.reason === 'ColdStart') count(s.cold, second);
      }
      if (PLACEMENT_REASONS.has(e.reason)) {
        state.placements.push({ time: e.time, kind: e.kind, name: e.name, node: e.node,
          reason: e.reason, message: e.message });
        if (state.placements.length > 200) state.placements.splice(0, 100);
      }
    }
    // Any change may move a count: read the lists again (at most once a second).
    scheduleRefresh();
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Follows /v1/events?watch=1 (NDJSON), reconnecting after `next` when it ends.
  async function follow() {
    let backoff = 500;
    while (!state.stopped) {
      try {
        const res = await api(`/v1/events?watch=1&after=${state.next}`);
        setConn('live');
        backoff = 500;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (line) onEvent(JSON.parse(line));
          }
        }
      } catch (e) {
        if (isAuth(e)) return authFailed(e);
      }
      if (state.stopped) return;
      setConn('reconnecting');
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
      scheduleRefresh();
    }
  }

  async function start() {
    $('scope').textContent = stack ? `stack ${stack}` : 'all stacks';
    if (stack) document.title = `Blixard: ${stack}`;
    // What the server kept of the stream seeds the charts and the placements; then follow it live.
    try {
      const kept = await getJson('/v1/events?after=0');
      for (const e of kept.events || []) onEvent(e);
      state.next = Math.max(state.next, int(kept.next));
    } catch (e) {
      if (isAuth(e)) return authFailed(e);
    }
    await refresh();
    if (state.stopped) return;
    setInterval(scheduleRefresh, FALLBACK_MS);
    setInterval(() => {   // the charts move with time even when nothing happens
      const oldest = Math.floor(Date.now() / 1000) - WINDOW_S;
      for (const s of state.series.values()) { prune(s.inv, oldest); prune(s.cold, oldest); }
      if (!state.stopped) renderFunctions(state.functions.filter(inStack));
    }, 1000);
    follow();
  }

  document.addEventListener('DOMContentLoaded', start);
})();

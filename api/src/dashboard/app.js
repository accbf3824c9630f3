// kodomasu dashboard: plain JavaScript over the admin API (/api/v1), no build step, no
// external resources. Views are chosen by the URL hash: #/workflows[?status=&type=&q=],
// #/workflows/<id>, #/workers, #/flows. Any 401 shows the login form, which exchanges a token
// for the session cookie (POST /api/v1/session); the live stream (/api/v1/events) then sends
// that cookie. When the stream is not available the views poll instead.
'use strict';

(() => {
  const API = '/api/v1';
  const STATUSES = ['running', 'paused', 'completed', 'failed', 'cancelled'];
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  const POLL_MS = 2500;
  const SAFETY_REFRESH_MS = 15000;
  const PAGE_SIZE = 50;

  // ---------------------------------------------------------------- helpers

  /** Creates an element; `attrs` keys: class, text, dataset (object), on<event>, or attributes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (selector, root = document) => root.querySelector(selector);

  function compact(value) {
    if (value === undefined) return '';
    try {
      return JSON.stringify(value);
    } catch {
      return String(value);
    }
  }

  function shorten(text, max) {
    const s = String(text ?? '');
    return s.length <= max ? s : s.slice(0, max - 1) + '…';
  }

  function parseTime(value) {
    if (!value) return null;
    const t = new Date(value);
    return Number.isNaN(t.getTime()) ? null : t;
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
    const abs = Math.abs(ms);
    if (abs < 1000) return `${Math.round(ms)} ms`;
    if (abs < 60000) return `${(ms / 1000).toFixed(1)} s`;
    if (abs < 3600000) return `${Math.floor(abs / 60000)}m ${String(Math.floor((abs % 60000) / 1000)).padStart(2, '0')}s`;
    if (abs < 172800000) return `${Math.floor(abs / 3600000)}h ${String(Math.floor((abs % 3600000) / 60000)).padStart(2, '0')}m`;
    return `${Math.floor(abs / 86400000)}d`;
  }

  function relative(value) {
    const t = parseTime(value);
    if (!t) return '–';
    const diff = t.getTime() - Date.now();
    if (Math.abs(diff) < 1000) return 'now';
    return diff > 0 ? `in ${fmtDuration(diff)}` : `${fmtDuration(-diff)} ago`;
  }

  function absolute(value) {
    const t = parseTime(value);
    return t ? t.toISOString().replace('T', ' ').replace('Z', ' UTC') : '–';
  }

  /** A time element that shows a relative time and keeps it fresh. */
  function timeEl(value) {
    const node = el('time', { class: 'rel', datetime: value || '', title: absolute(value), text: relative(value) });
    return node;
  }

  function refreshRelativeTimes() {
    for (const node of document.querySelectorAll('time.rel')) {
      node.textContent = relative(node.getAttribute('datetime'));
    }
  }

  function badge(status) {
    return el('span', { class: `badge status-${status || 'unknown'}`, 'data-testid': 'status', text: status || '?' });
  }

  /** The tail of an id: v7 UUIDs made close together share their (time) head. */
  function shortId(id) {
    return id ? `…${String(id).slice(-8)}` : '–';
  }

  let toastTimer = null;
  function toast(message, kind = 'info') {
    const node = $('#toast');
    node.textContent = message;
    node.className = `toast toast-${kind}`;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, 2500);
  }

  // ---------------------------------------------------------------- API

  class Unauthorized extends Error {}

  class ApiError extends Error {
    constructor(status, code, message) {
      super(`${status} ${code}: ${message}`);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = 'GET', body } = {}) {
    const headers = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(API + path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.status === 401) {
      showLogin();
      throw new Unauthorized('unauthorized');
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      throw new ApiError(res.status, (data && data.code) || `http_${res.status}`, (data && data.message) || shorten(text, 200));
    }
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') q.set(key, value);
    }
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // ---------------------------------------------------------------- login

  let loginShown = false;

  function showLogin() {
    if (loginShown) return;
    loginShown = true;
    disconnectEvents();
    setLive('signed-out');
    $('#login').hidden = false;
    $('#logout').hidden = true;
    $('#login-error').textContent = '';
    setTimeout(() => $('#login-token').focus(), 0);
  }

  function hideLogin() {
    loginShown = false;
    $('#login').hidden = true;
  }

  async function login(event) {
    event.preventDefault();
    const input = $('#login-token');
    const errorNode = $('#login-error');
    const token = input.value.trim();
    errorNode.textContent = '';
    if (!token) {
      errorNode.textContent = 'Paste a token first.';
      return;
    }
    $('#login-submit').disabled = true;
    try {
      const res = await fetch(`${API}/session`, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ token }),
      });
      if (res.status === 401) {
        errorNode.textContent = 'This token is unknown or revoked.';
        return;
      }
      if (!res.ok) {
        errorNode.textContent = `The server answered ${res.status}.`;
        return;
      }
      input.value = '';
      hideLogin();
      $('#logout').hidden = false;
      connectEvents();
      route();
    } catch (e) {
      errorNode.textContent = `Cannot reach the server: ${e.message}`;
    } finally {
      $('#login-submit').disabled = false;
    }
  }

  async function logout() {
    try {
      const res = await fetch(`${API}/session`, { method: 'DELETE', credentials: 'same-origin' });
      if (res.status === 404) {
        toast('This server has no sessions (no access control).', 'error');
        return;
      }
    } catch {
      // Offline: the form shows anyway.
    }
    showLogin();
  }

  // ---------------------------------------------------------------- live events

  let source = null;
  let sourceRetry = null;
  let liveState = 'connecting';

  function setLive(state) {
    liveState = state;
    const node = $('#live-status');
    node.dataset.state = state;
    node.textContent = { live: '● live', polling: '○ polling', connecting: '… connecting', reconnecting: '… reconnecting', 'signed-out': '○ signed out' }[state] || state;
    node.title = state === 'live' ? 'Live: following /api/v1/events' : 'No live stream: refreshing periodically';
  }

  function connectEvents() {
    disconnectEvents();
    if (typeof EventSource === 'undefined') {
      setLive('polling');
      return;
    }
    setLive('connecting');
    const es = new EventSource(`${API}/events`);
    source = es;
    es.addEventListener('open', () => setLive('live'));
    es.addEventListener('transition', (event) => {
      let data = null;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      const status = $('#live-status');
      status.dataset.events = String((Number(status.dataset.events) || 0) + 1);
      if (current && current.onTransition) current.onTransition(data);
    });
    es.addEventListener('error', () => {
      if (source !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // Refused (not available, or not signed in): poll, and try the stream again later.
        source = null;
        setLive('polling');
        clearTimeout(sourceRetry);
        sourceRetry = setTimeout(() => { if (!loginShown) connectEvents(); }, 30000);
      } else {
        setLive('reconnecting');
      }
    });
  }

  function disconnectEvents() {
    clearTimeout(sourceRetry);
    if (source) {
      const es = source;
      source = null;
      es.close();
    }
  }

  // ---------------------------------------------------------------- router

  let current = null;

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/workflows';
    const [path, search] = raw.split('?');
    const parts = path.split('/').filter(Boolean);
    return { parts, params: new URLSearchParams(search || '') };
  }

  function route() {
    if (current && current.destroy) current.destroy();
    $('#toast').hidden = true;
    current = null;
    const { parts, params } = parseHash();
    const view = $('#view');
    view.replaceChildren();
    let section = 'workflows';
    if (parts[0] === 'workflows' && parts[1]) {
      current = workflowView(view, decodeURIComponent(parts[1]));
    } else if (parts[0] === 'workers') {
      section = 'workers';
      current = workersView(view);
    } else if (parts[0] === 'flows') {
      section = 'flows';
      current = flowsView(view);
    } else {
      current = listView(view, params);
    }
    for (const link of document.querySelectorAll('#nav a')) {
      link.classList.toggle('active', link.dataset.nav === section);
    }
    if (!loginShown) current.refresh();
  }

  /** Runs `fn` at most once per `ms`, the last call winning. */
  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  /** Shows a load error in `node` (401s are handled by the login form). */
  function showError(node, e) {
    if (e instanceof Unauthorized) return;
    node.replaceChildren(el('p', { class: 'error', text: e instanceof ApiError ? e.message : `Cannot reach the server: ${e.message}` }));
  }

  // ---------------------------------------------------------------- workflows list

  function listView(root, params) {
    const filters = {
      status: params.get('status') || '',
      type: params.get('type') || '',
      q: params.get('q') || '',
      flow: params.get('flow') || '',
    };
    let rows = [];
    let cursor = null;
    let loading = false;
    let clientSearch = false;

    const counts = el('div', { class: 'counts', id: 'counts' });
    const statusSelect = el('select', { id: 'filter-status', 'aria-label': 'Status' },
      el('option', { value: '', text: 'any status' }),
      STATUSES.map((s) => el('option', { value: s, text: s })));
    statusSelect.value = filters.status;
    const typeInput = el('input', { id: 'filter-type', type: 'search', placeholder: 'type, e.g. demo.chain', list: 'type-options', value: filters.type, 'aria-label': 'Type' });
    const typeOptions = el('datalist', { id: 'type-options' });
    const searchInput = el('input', { id: 'filter-search', type: 'search', placeholder: 'key or id prefix', value: filters.q, 'aria-label': 'Search' });
    const clear = el('button', { type: 'button', id: 'filter-clear', class: 'link-button', text: 'clear' });
    const flowChip = filters.flow
      ? el('span', { class: 'chip', id: 'filter-flow' }, `flow ${filters.flow}`, el('button', {
        type: 'button', class: 'link-button', 'aria-label': 'Remove the flow filter', text: '×',
        onclick: () => { filters.flow = ''; flowChip.remove(); syncHash(); refresh(); },
      }))
      : null;
    const form = el('form', { class: 'filters', id: 'filters' }, statusSelect, typeInput, typeOptions, searchInput, flowChip, clear);
    const tbody = el('tbody', { id: 'workflows-body' });
    const table = el('table', { id: 'workflows-table', class: 'data' },
      el('thead', {}, el('tr', {}, ['Status', 'Workflow', 'Type', 'Key', 'Waiting on', 'Created', 'Updated'].map((h) => el('th', { text: h })))),
      tbody);
    const more = el('button', { type: 'button', id: 'load-more', hidden: true, text: 'Load more' });
    const message = el('div', { id: 'list-message' });
    root.append(el('section', { id: 'workflows-view' },
      el('div', { class: 'page-head' }, el('h1', { text: 'Workflows' }), counts),
      form, message, el('div', { class: 'table-wrap' }, table), more));

    function syncHash() {
      const hash = `#/workflows${query(filters)}`;
      if (location.hash !== hash) history.replaceState(null, '', hash);
    }

    const apply = debounce(() => {
      filters.status = statusSelect.value;
      filters.type = typeInput.value.trim();
      filters.q = searchInput.value.trim();
      syncHash();
      refresh();
    }, 250);
    statusSelect.addEventListener('change', apply);
    typeInput.addEventListener('input', apply);
    searchInput.addEventListener('input', apply);
    form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
    clear.addEventListener('click', () => {
      filters.flow = '';
      if (flowChip) flowChip.remove();
      statusSelect.value = '';
      typeInput.value = '';
      searchInput.value = '';
      apply();
    });
    more.addEventListener('click', () => loadPage(true));

    function matchesSearch(w) {
      const q = filters.q.toLowerCase();
      return !q || String(w.id).startsWith(q) || String(w.key || '').toLowerCase().includes(q);
    }

    async function fetchPage(after) {
      const params = { status: filters.status, type: filters.type, flow: filters.flow, q: clientSearch ? '' : filters.q, limit: PAGE_SIZE, cursor: after };
      try {
        return await api(`/workflows${query(params)}`);
      } catch (e) {
        // A server without `q`: search on this page instead.
        if (e instanceof ApiError && e.status === 400 && filters.q && !clientSearch) {
          clientSearch = true;
          return fetchPage(after);
        }
        throw e;
      }
    }

    async function loadPage(append) {
      if (loading) return;
      loading = true;
      try {
        const body = await fetchPage(append ? cursor : null);
        const page = (body && body.workflows) || [];
        rows = append ? rows.concat(page) : page;
        cursor = (body && body.next_cursor) || null;
        message.replaceChildren();
        render();
      } catch (e) {
        showError(message, e);
      } finally {
        loading = false;
      }
    }

    function render() {
      const shown = clientSearch ? rows.filter(matchesSearch) : rows;
      tbody.replaceChildren(...shown.map(row));
      if (!shown.length) {
        tbody.append(el('tr', { class: 'empty' }, el('td', { colspan: 7, text: 'No workflows match.' })));
      }
      more.hidden = !cursor;
      const types = new Set(rows.map((w) => w.type).filter(Boolean));
      typeOptions.replaceChildren(...[...types].sort().map((t) => el('option', { value: t })));
    }

    function row(w) {
      const href = `#/workflows/${encodeURIComponent(w.id)}`;
      return el('tr', {
        'data-testid': 'workflow-row',
        dataset: { id: w.id, status: w.status },
        class: 'clickable',
        onclick: (e) => { if (!e.target.closest('a')) location.hash = href; },
      },
      el('td', {}, badge(w.status)),
      el('td', {}, el('a', { href, class: 'mono', title: w.id, text: w.id })),
      el('td', { text: w.type || '–' }),
      el('td', { class: 'mono', title: w.key || '', text: shorten(w.key || '–', 40) }),
      el('td', { text: waitingShort(w.waiting_on) }),
      el('td', {}, timeEl(w.created_at)),
      el('td', {}, timeEl(w.updated_at)));
    }

    async function loadCounts() {
      const params = { type: filters.type, flow: filters.flow, q: clientSearch ? '' : filters.q };
      let data = null;
      try {
        data = await api(`/workflows/counts${query(params)}`);
      } catch (e) {
        if (e instanceof Unauthorized) return;
        data = await countsFallback();
      }
      renderCounts(data);
    }

    /** Without the counts endpoint: one list request per status (shows `500+` past a page). */
    async function countsFallback() {
      const result = { counts: {}, total: 0, approximate: false };
      await Promise.all(STATUSES.map(async (status) => {
        try {
          const body = await api(`/workflows${query({ status, type: filters.type, limit: 500 })}`);
          const n = ((body && body.workflows) || []).length;
          result.counts[status] = n;
          result.total += n;
          if (body && body.next_cursor) result.approximate = true;
        } catch {
          result.counts[status] = null;
        }
      }));
      return result;
    }

    function renderCounts(data) {
      if (!data) return;
      const c = data.counts || {};
      const suffix = data.approximate ? '+' : '';
      const button = (status, label, n) => el('button', {
        type: 'button',
        class: `count ${filters.status === status ? 'selected' : ''} status-${status || 'all'}`,
        'data-testid': `count-${status || 'total'}`,
        dataset: { count: n ?? '' },
        onclick: () => { statusSelect.value = status; apply(); },
      }, el('span', { class: 'count-n', text: n === null || n === undefined ? '–' : `${n}${suffix}` }), el('span', { class: 'count-label', text: label }));
      counts.replaceChildren(
        button('', 'total', data.total),
        ...STATUSES.map((s) => button(s, s, c[s] ?? 0)));
    }

    function refresh() {
      loadPage(false);
      loadCounts();
    }

    const refreshSoon = debounce(refresh, 300);
    return {
      refresh,
      onTransition: refreshSoon,
      tick(now) {
        if (liveState !== 'live' || now - lastFull > SAFETY_REFRESH_MS) {
          lastFull = now;
          refresh();
        }
      },
      destroy() {},
    };
  }

  let lastFull = 0;

  function waitingShort(w) {
    if (!w || !w.kind) return '–';
    switch (w.kind) {
      case 'activity': return `activity ${w.name} #${w.call_seq} (attempt ${w.attempt})`;
      case 'backing_off': return `backing off ${w.name}, next ${relative(w.until)}`;
      case 'timer': return `timer ${relative(w.due_at)}`;
      case 'signal': return 'a signal';
      case 'paused': return 'paused';
      case 'nothing': return '–';
      default: return w.kind;
    }
  }

  function waitingLong(w) {
    if (!w || !w.kind) return 'unknown';
    switch (w.kind) {
      case 'activity': {
        const head = `Activity “${w.name}” (call ${w.call_seq}), attempt ${w.attempt}`;
        return w.worker
          ? `${head}, running on worker ${shortId(w.worker)} — lease until ${absolute(w.lease_expires_at)} (${relative(w.lease_expires_at)})`
          : `${head}, waiting for a worker to claim it`;
      }
      case 'backing_off': {
        const err = w.last_error ? ` Last error: ${w.last_error.code}: ${w.last_error.message}` : '';
        return `Backing off: “${w.name}” (call ${w.call_seq}) attempt ${w.next_attempt} at ${absolute(w.until)} (${relative(w.until)}).${err}`;
      }
      case 'timer': return `Timer due at ${absolute(w.due_at)} (${relative(w.due_at)})`;
      case 'signal': return 'A signal';
      case 'paused': return 'Paused: waits for the resume signal';
      case 'nothing': return 'Nothing: the workflow has finished';
      default: return compact(w);
    }
  }

  // ---------------------------------------------------------------- one workflow

  /**
   * A label for a state value: the variant's name (its `state`/`phase`/`kind`/`status` field,
   * or the one key of an externally tagged enum) and up to three of its plain fields.
   */
  function stateName(state) {
    if (state === null || state === undefined) return '';
    if (typeof state !== 'object' || Array.isArray(state)) return shorten(compact(state), 60);
    let name = null;
    let fields = state;
    for (const key of ['state', 'phase', 'kind', 'status', 'type']) {
      if (typeof state[key] === 'string') {
        name = state[key];
        break;
      }
    }
    const keys = Object.keys(state);
    if (!name && keys.length === 1 && state[keys[0]] && typeof state[keys[0]] === 'object') {
      name = keys[0];
      fields = state[keys[0]];
    }
    const plain = Object.entries(fields)
      .filter(([k, v]) => v !== null && typeof v !== 'object' && !['state', 'phase', 'kind', 'status', 'type'].includes(k))
      .slice(0, 3)
      .map(([k, v]) => `${k} ${shorten(String(v), 24)}`);
    if (!name) return shorten(compact(state), 60);
    return plain.length ? `${name} (${plain.join(', ')})` : name;
  }

  /** The event's own fields (flat, or nested as `payload` by the server). */
  function eventFields(e) {
    const rest = {};
    for (const [key, value] of Object.entries(e || {})) {
      if (!['seq', 'kind', 'created_at', 'at'].includes(key)) rest[key] = value;
    }
    const keys = Object.keys(rest);
    if (keys.length === 1 && keys[0] === 'payload' && rest.payload && typeof rest.payload === 'object') return rest.payload;
    return rest;
  }

  function eventSummary(e) {
    const f = eventFields(e);
    const call = () => `${f.name} #${f.call_seq} attempt ${f.attempt}`;
    switch (e.kind) {
      case 'started': return `started ${f.workflow_type || ''}${f.key ? ` key ${f.key}` : ''}`;
      case 'transitioned': {
        const cause = f.cause ? [f.cause.type, f.cause.name].filter(Boolean).join(' ') : '';
        const next = f.pending ? [f.pending.kind, f.pending.name].filter(Boolean).join(' ') : '';
        return `state ${stateName(f.state)}${cause ? ` after ${cause}` : ''}${next ? `; next: ${next}` : ''}`;
      }
      case 'activity_completed': return `${call()} completed → ${shorten(compact(f.output), 80)}`;
      case 'activity_failed': return `${call()} failed: ${f.error ? `${f.error.code}: ${f.error.message}` : ''}${f.retry_at ? `; retry ${absolute(f.retry_at)}` : '; no retry'}`;
      case 'activity_abandoned': return `${call()} abandoned (worker ${shortId(f.worker)} lost its lease)`;
      case 'signal_applied': return `signal ${f.name}${f.payload !== undefined && f.payload !== null ? ` ${shorten(compact(f.payload), 60)}` : ''}`;
      case 'signal_discarded': return `signal ${f.name} discarded: ${f.reason}`;
      case 'paused': return 'paused';
      case 'resumed': return 'resumed';
      case 'completed': return `completed → ${shorten(compact(f.output), 80)}`;
      case 'failed': return `failed: ${f.error ? `${f.error.code}: ${f.error.message}` : ''}`;
      case 'cancelled': return 'cancelled';
      default: return shorten(compact(f), 100);
    }
  }

  /** The timeline from the journal, for servers without `/timeline`. */
  function timelineFromHistory(events) {
    let status = 'running';
    return events.map((e) => {
      const f = eventFields(e);
      if (e.kind === 'transitioned' && f.status) status = f.status;
      else if (e.kind === 'paused') status = 'paused';
      else if (e.kind === 'resumed' || e.kind === 'started') status = 'running';
      else if (TERMINAL.has(e.kind)) status = e.kind;
      return { seq: e.seq, at: e.created_at || e.at, kind: e.kind, status, summary: eventSummary(e) };
    });
  }

  function workflowView(root, id) {
    let workflow = null;
    let cancelArmed = null;
    let pollTimer = null;

    const title = el('h1', { id: 'wf-title', text: 'Workflow' });
    const status = el('span', { id: 'wf-status', class: 'badge', text: '…' });
    const pauseBtn = el('button', { type: 'button', id: 'btn-pause', text: 'Pause', disabled: true });
    const resumeBtn = el('button', { type: 'button', id: 'btn-resume', text: 'Resume', disabled: true });
    const cancelBtn = el('button', { type: 'button', id: 'btn-cancel', class: 'danger', text: 'Cancel', disabled: true });
    const summary = el('dl', { id: 'wf-summary', class: 'kv' });
    const waiting = el('p', { id: 'wf-waiting', class: 'waiting' });
    const path = el('div', { id: 'wf-path', class: 'path', 'data-testid': 'status-path' });
    const timeline = el('ol', { id: 'wf-timeline', class: 'timeline' });
    const attempts = el('div', { id: 'wf-attempts' });
    const journal = el('div', { id: 'wf-journal' });
    const data = el('div', { id: 'wf-data', class: 'data-blocks' });
    const payment = el('div', { id: 'wf-payment', class: 'card', hidden: true });
    const message = el('div', { id: 'wf-message' });

    root.append(el('section', { id: 'workflow-view', dataset: { id } },
      el('a', { href: '#/workflows', class: 'back', text: '← All workflows' }),
      el('div', { class: 'page-head' },
        el('div', { class: 'title-row' }, title, status),
        el('div', { class: 'actions' }, pauseBtn, resumeBtn, cancelBtn)),
      message,
      el('div', { class: 'grid' },
        el('div', { class: 'card' }, el('h2', { text: 'Summary' }), summary),
        el('div', { class: 'card' }, el('h2', { text: 'Waiting on' }), waiting, el('h2', { text: 'Path' }), path)),
      el('div', { class: 'card' }, el('h2', { text: 'State machine timeline' }), timeline),
      el('div', { class: 'card' }, el('h2', { text: 'Activity attempts' }), attempts),
      payment,
      el('div', { class: 'card' }, el('h2', { text: 'Journal' }), journal),
      el('div', { class: 'card' }, el('h2', { text: 'Data' }), data)));

    async function signal(name) {
      try {
        await api(`/workflows/${encodeURIComponent(id)}/signals`, { method: 'POST', body: { name } });
        toast(`${name} sent`, 'ok');
        setTimeout(refresh, 150);
      } catch (e) {
        if (!(e instanceof Unauthorized)) toast(e.message, 'error');
      }
    }
    pauseBtn.addEventListener('click', () => signal('pause'));
    resumeBtn.addEventListener('click', () => signal('resume'));
    cancelBtn.addEventListener('click', () => {
      if (!cancelArmed) {
        cancelBtn.textContent = 'Confirm cancel';
        cancelBtn.classList.add('armed');
        cancelArmed = setTimeout(disarm, 4000);
        return;
      }
      disarm();
      signal('cancel');
    });
    function disarm() {
      clearTimeout(cancelArmed);
      cancelArmed = null;
      cancelBtn.textContent = 'Cancel';
      cancelBtn.classList.remove('armed');
    }

    function renderWorkflow(w) {
      workflow = w;
      title.replaceChildren(el('span', { text: w.type || 'workflow' }), ' ', el('span', { class: 'mono muted', title: w.key || w.id, text: shorten(w.key || shortId(w.id), 48) }));
      status.textContent = w.status;
      status.className = `badge big status-${w.status}`;
      status.dataset.status = w.status;
      pauseBtn.disabled = w.status !== 'running';
      resumeBtn.disabled = w.status !== 'paused';
      cancelBtn.disabled = TERMINAL.has(w.status);
      if (cancelBtn.disabled) disarm();
      const rows = [
        ['id', el('span', { class: 'mono', text: w.id })],
        ['type', w.type],
        ['key', w.key || '–'],
        ['status', badge(w.status)],
        ['version', w.version],
        ['created', [timeEl(w.created_at), ` · ${absolute(w.created_at)}`]],
        ['updated', [timeEl(w.updated_at), ` · ${absolute(w.updated_at)}`]],
        ['finished', w.finished_at ? [timeEl(w.finished_at), ` · ${absolute(w.finished_at)}`] : '–'],
        ['duration', fmtDuration((parseTime(w.finished_at) || new Date()) - parseTime(w.created_at))],
      ];
      if (w.lease_owner) rows.push(['lease', `worker ${shortId(w.lease_owner)} until ${absolute(w.lease_expires_at)}`]);
      if (w.pending_signals) rows.push(['signals', `${w.pending_signals} not yet applied`]);
      if (w.cancel_requested) rows.push(['cancel', 'requested']);
      summary.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
      waiting.textContent = waitingLong(w.waiting_on);
      waiting.dataset.kind = (w.waiting_on && w.waiting_on.kind) || '';
      data.replaceChildren(...['input', 'state', 'output', 'error', 'heartbeat_details']
        .filter((k) => w[k] !== undefined && w[k] !== null)
        .map((k) => el('div', { class: 'data-block', id: `wf-${k}` }, el('h3', { text: k }), el('pre', { text: JSON.stringify(w[k], null, 2) }))));
    }

    function renderTimeline(entries, finishedAt) {
      timeline.replaceChildren(...entries.map((t, i) => {
        const at = parseTime(t.at);
        const prev = i > 0 ? parseTime(entries[i - 1].at) : null;
        const delta = at && prev ? `+${fmtDuration(at - prev)}` : '';
        return el('li', { 'data-testid': 'timeline-entry', class: `status-${t.status || 'unknown'} kind-${t.kind}`, dataset: { kind: t.kind, status: t.status || '', seq: t.seq } },
          el('span', { class: 'dot', 'aria-hidden': 'true' }),
          el('span', { class: 'tl-seq mono', text: `#${t.seq}` }),
          el('span', { class: 'tl-kind', text: t.kind }),
          el('span', { class: `badge small status-${t.status}`, text: t.status || '' }),
          el('span', { class: 'tl-summary', text: t.summary || '' }),
          el('span', { class: 'tl-time muted', title: absolute(t.at), text: delta || absolute(t.at) }));
      }));
      // The path: consecutive statuses with how long each lasted.
      const segments = [];
      for (const t of entries) {
        const last = segments[segments.length - 1];
        if (!last || last.status !== t.status) segments.push({ status: t.status, from: parseTime(t.at), to: parseTime(t.at) });
        else last.to = parseTime(t.at);
      }
      for (let i = 0; i < segments.length; i++) {
        const next = segments[i + 1];
        segments[i].end = next ? next.from : (TERMINAL.has(segments[i].status) ? segments[i].to : (parseTime(finishedAt) || new Date()));
      }
      path.replaceChildren(...segments.flatMap((s, i) => [
        i ? el('span', { class: 'arrow', text: '→' }) : null,
        el('span', { class: `segment status-${s.status}`, 'data-testid': 'path-segment', dataset: { status: s.status } },
          el('span', { text: s.status }),
          TERMINAL.has(s.status) ? null : el('span', { class: 'muted', text: ` ${fmtDuration(s.end - s.from)}` })),
      ].filter(Boolean)));
    }

    function renderAttempts(list) {
      if (!list.length) {
        attempts.replaceChildren(el('p', { class: 'muted', text: 'No activity attempt finished yet.' }));
        return;
      }
      attempts.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'data', id: 'attempts-table' },
        el('thead', {}, el('tr', {}, ['Call', 'Attempt', 'Activity', 'Outcome', 'Error', 'Worker', 'Started', 'Duration'].map((h) => el('th', { text: h })))),
        el('tbody', {}, list.map((a) => el('tr', { 'data-testid': 'attempt-row', dataset: { outcome: a.outcome } },
          el('td', { class: 'mono', text: `#${a.call_seq}` }),
          el('td', { text: a.attempt }),
          el('td', { text: a.activity_name }),
          el('td', {}, el('span', { class: `badge small outcome-${a.outcome}`, text: a.outcome })),
          el('td', { class: 'error-text', text: a.error ? `${a.error.code}: ${a.error.message}` : '' }),
          el('td', { class: 'mono', title: a.worker_id || '', text: shortId(a.worker_id) }),
          el('td', {}, timeEl(a.started_at || a.finished_at)),
          el('td', { text: fmtDuration(a.duration_ms) })))))));
    }

    function renderJournal(events) {
      journal.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'data', id: 'journal-table' },
        el('thead', {}, el('tr', {}, ['Seq', 'Time', 'Event', 'Details'].map((h) => el('th', { text: h })))),
        el('tbody', {}, events.map((e) => el('tr', { 'data-testid': 'journal-row', dataset: { kind: e.kind } },
          el('td', { class: 'mono', text: e.seq }),
          el('td', { class: 'nowrap', title: absolute(e.created_at || e.at), text: absolute(e.created_at || e.at) }),
          el('td', { text: e.kind }),
          el('td', { class: 'details-cell' }, el('details', {}, el('summary', { text: shorten(eventSummary(e), 160) }), el('pre', { text: JSON.stringify(eventFields(e), null, 2) })))))))));
    }

    async function loadPayment(w) {
      if (w.type !== 'paid_job') return;
      try {
        const p = await api(`/workflows/${encodeURIComponent(id)}/payment`);
        payment.hidden = false;
        // `{id, flow, payment: {...}}`: the payment's own fields, flattened.
        const fields = p && p.payment && typeof p.payment === 'object' ? { flow: p.flow, ...p.payment } : (p || {});
        payment.replaceChildren(el('h2', { text: 'Payment' }), el('dl', { class: 'kv', id: 'payment-fields' },
          Object.entries(fields).flatMap(([k, v]) => {
            const object = v !== null && typeof v === 'object';
            return [el('dt', { text: k.replace(/_/g, ' ') }), el('dd', { class: object ? 'mono' : '', text: object ? compact(v) : String(v ?? '–') })];
          })));
      } catch (e) {
        payment.hidden = true;
      }
    }

    let loading = false;
    async function refresh() {
      if (loading) return;
      loading = true;
      const path = `/workflows/${encodeURIComponent(id)}`;
      try {
        const w = await api(path);
        message.replaceChildren();
        renderWorkflow(w);
        const [historyBody, attemptsBody, timelineBody] = await Promise.all([
          api(`${path}/history`).catch((e) => { if (e instanceof Unauthorized) throw e; return { events: [] }; }),
          api(`${path}/attempts`).catch((e) => { if (e instanceof Unauthorized) throw e; return { attempts: [] }; }),
          api(`${path}/timeline`).catch((e) => { if (e instanceof Unauthorized) throw e; return null; }),
        ]);
        const events = (historyBody && historyBody.events) || [];
        const entries = (timelineBody && timelineBody.timeline) || timelineFromHistory(events);
        timeline.dataset.source = timelineBody && timelineBody.timeline ? 'timeline' : 'history';
        renderTimeline(entries, w.finished_at);
        renderAttempts((attemptsBody && attemptsBody.attempts) || []);
        renderJournal(events);
        loadPayment(w);
      } catch (e) {
        showError(message, e);
      } finally {
        loading = false;
      }
    }

    const refreshSoon = debounce(refresh, 200);
    return {
      refresh,
      onTransition(t) {
        if (t && t.workflow_id === id) refreshSoon();
      },
      tick(now) {
        const open = !workflow || !TERMINAL.has(workflow.status);
        if ((liveState !== 'live' && open) || now - lastFull > SAFETY_REFRESH_MS) {
          lastFull = now;
          refresh();
        }
      },
      destroy() {
        clearTimeout(pollTimer);
        disarm();
      },
    };
  }

  // ---------------------------------------------------------------- workers and flows

  function workersView(root) {
    const body = el('div', { id: 'workers' });
    root.append(el('section', { id: 'workers-view' }, el('div', { class: 'page-head' }, el('h1', { text: 'Workers' })), body));
    async function refresh() {
      try {
        const data = await api('/workers');
        const workers = (data && data.workers) || [];
        if (!workers.length) {
          body.replaceChildren(el('p', { class: 'muted', text: 'No worker has registered.' }));
          return;
        }
        body.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'data', id: 'workers-table' },
          el('thead', {}, el('tr', {}, ['', 'Worker', 'Host', 'PID', 'Slots used', 'Last heartbeat', 'Started'].map((h) => el('th', { text: h })))),
          el('tbody', {}, workers.map((w) => {
            const used = Number(w.slots_used) || 0;
            const slots = Number(w.slots) || 0;
            const bar = el('span', { class: 'bar' }, el('span', { class: 'bar-fill' }));
            bar.firstChild.style.width = `${slots ? Math.min(100, (100 * used) / slots) : 0}%`;
            return el('tr', { 'data-testid': 'worker-row', dataset: { alive: String(!!w.alive) } },
              el('td', {}, el('span', { class: `badge small ${w.alive ? 'status-completed' : 'status-cancelled'}`, text: w.alive ? 'alive' : (w.stopped_at ? 'stopped' : 'silent') })),
              el('td', { class: 'mono', title: w.id, text: shortId(w.id) }),
              el('td', { text: w.host || '–' }),
              el('td', { text: w.pid ?? '–' }),
              el('td', {}, bar, ` ${used} / ${slots}`),
              el('td', {}, timeEl(w.heartbeat_at)),
              el('td', {}, timeEl(w.started_at)));
          })))));
      } catch (e) {
        showError(body, e);
      }
    }
    return {
      refresh,
      tick(now) {
        if (now - lastFull > 5000) {
          lastFull = now;
          refresh();
        }
      },
    };
  }

  function flowsView(root) {
    const body = el('div', { id: 'flows' });
    root.append(el('section', { id: 'flows-view' }, el('div', { class: 'page-head' }, el('h1', { text: 'Flows' })), body));
    async function fetchFlows() {
      try {
        return await api('/flows');
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 404) throw e;
        // Without the admin endpoint: the public MIP-003 flow list.
        const res = await fetch('/flows', { headers: { accept: 'application/json' } });
        if (!res.ok) throw new ApiError(res.status, `http_${res.status}`, 'no flow list on this server');
        return res.json();
      }
    }
    async function refresh() {
      try {
        const data = await fetchFlows();
        // A flow's sale settings become columns of their own.
        const flows = ((data && data.flows) || (Array.isArray(data) ? data : [])).map((f) => {
          const { settings, ...rest } = f;
          return settings && typeof settings === 'object' ? { ...rest, ...settings } : f;
        });
        if (!flows.length) {
          body.replaceChildren(el('p', { class: 'muted', text: 'No flows: paid jobs are not configured on this server.' }));
          return;
        }
        const text = (v) => (v === null || v === undefined || v === '' ? '–' : String(v));
        const columns = [
          ['Flow', (f) => [el('div', { text: f.summary || f.name || f.uid }), el('div', { class: 'muted small', text: shorten(f.description || '', 90) })]],
          ['UID', (f) => el('span', { class: 'mono nowrap', title: f.uid, text: shorten(f.uid, 14) })],
          ['Available', (f) => (f.available === false
            ? el('span', { class: 'badge small status-failed', title: text(f.unavailable_reason), text: text(f.unavailable_reason || 'no') })
            : el('span', { class: 'badge small status-completed', text: 'yes' }))],
          ['Network', (f) => text(f.network)],
          ['Pay by', (f) => text(f.pay_by)],
          ['Submit within', (f) => text(f.submit_result_within)],
          ['Refund on dispute', (f) => text(f.refund_on_dispute)],
          ['Agent', (f) => el('span', { class: 'mono nowrap', title: text(f.agent_identifier), text: shorten(text(f.agent_identifier), 14) })],
          ['', (f) => (f.uid ? el('a', { href: `#/workflows${query({ type: 'paid_job', flow: f.uid })}`, class: 'flow-jobs nowrap', text: 'jobs →' }) : '')],
        ];
        body.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'data', id: 'flows-table' },
          el('thead', {}, el('tr', {}, columns.map(([h]) => el('th', { text: h })))),
          el('tbody', {}, flows.map((f) => el('tr', { 'data-testid': 'flow-row', dataset: { uid: f.uid || '' } },
            columns.map(([, cell]) => el('td', {}, cell(f)))))))));
      } catch (e) {
        showError(body, e);
      }
    }
    return { refresh, tick() {} };
  }

  // ---------------------------------------------------------------- start

  function tick() {
    refreshRelativeTimes();
    if (!loginShown && current && current.tick && document.visibilityState !== 'hidden') {
      current.tick(Date.now());
    }
  }

  function start() {
    $('#login-form').addEventListener('submit', login);
    $('#logout').addEventListener('click', logout);
    window.addEventListener('hashchange', route);
    setLive('connecting');
    // One probe decides between the login form and the dashboard.
    api('/workers').then(() => {
      $('#logout').hidden = false;
      connectEvents();
    }).catch(() => {
      if (!loginShown) connectEvents();
    });
    lastFull = Date.now();
    route();
    setInterval(tick, POLL_MS);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

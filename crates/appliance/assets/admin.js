// The web admin's script, served at /assets/admin.js (the CSP allows no inline script): sends
// the forms to the JSON API with the CSRF token and follows progress.
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const msg = document.getElementById('message');
function say(text, cls) { msg.textContent = text; msg.className = cls || ''; }
async function call(method, url, body, json) {
  const headers = {'X-CSRF-Token': csrf};
  if (json) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(body); }
  const r = await fetch(url, {method, headers, body, credentials: 'same-origin'});
  let j = null; try { j = await r.json(); } catch (e) {}
  return {ok: r.ok, status: r.status, body: j};
}
document.getElementById('kmip-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  document.getElementById('save-test').disabled = true;
  say('Saving the settings…');
  const r = await call('PUT', '/api/encryption/kmip', new FormData(e.target));
  if (!r.ok) { say((r.body && r.body.error) || ('saving failed: HTTP ' + r.status), 'error'); document.getElementById('save-test').disabled = false; return; }
  say('Saved. Testing every KMIP server step by step…');
  const t = await call('POST', '/api/encryption/test');
  if (!t.ok) { say((t.body && t.body.error) || ('the test failed: HTTP ' + t.status), 'error'); }
  location.reload();
});
const resume = document.getElementById('resume');
for (const [id, url] of [['encrypt', '/api/encryption/encrypt'], ['rekey', '/api/encryption/rekey'], ['move', '/api/encryption/move'], ['decrypt', '/api/encryption/decrypt'], ['resume', resume && resume.dataset.url]]) {
  const b = document.getElementById(id);
  if (!b) continue;
  b.addEventListener('click', async () => {
    if (id === 'decrypt') { document.getElementById('decrypt-confirm').hidden = false; document.getElementById('decrypt-password').focus(); return; }
    b.disabled = true; say('Starting…');
    const pw = document.getElementById('resume-password');
    const fullBox = document.getElementById('full-conversion');
    const r = id === 'resume' ? (pw ? await call('POST', url, {password: pw.value}, true) : await call('POST', url))
      : await call('POST', url, {full: !!(fullBox && fullBox.checked)}, true);
    if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); b.disabled = false; return; }
    if (r.body && r.body.recovery_key) { showRecoveryKey(r.body.recovery_key, 'Rekey started. It made a new recovery key for the new key; the previous one no longer opens the volume.'); return; }
    location.reload();
  });
}
const decryptGo = document.getElementById('decrypt-go');
if (decryptGo) decryptGo.addEventListener('click', async () => {
  decryptGo.disabled = true; say('Starting…');
  const fullBox = document.getElementById('full-conversion');
  const r = await call('POST', '/api/encryption/decrypt', {password: document.getElementById('decrypt-password').value, full: !!(fullBox && fullBox.checked)}, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); decryptGo.disabled = false; return; }
  location.reload();
});
const compromisedGo = document.getElementById('compromised-go');
if (compromisedGo) compromisedGo.addEventListener('click', async () => {
  compromisedGo.disabled = true; say('Confirming…');
  const r = await call('POST', '/api/encryption/read-only/confirm', {password: document.getElementById('compromised-password').value}, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); compromisedGo.disabled = false; return; }
  location.reload();
});
for (const b of document.querySelectorAll('.old-key-revoke')) {
  b.addEventListener('click', async () => {
    b.disabled = true; say('Revoking the old key…');
    const r = await call('POST', '/api/encryption/old-keys/' + encodeURIComponent(b.dataset.key) + '/revoke');
    if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); b.disabled = false; return; }
    location.reload();
  });
}
let destroyKey = null;
for (const b of document.querySelectorAll('.old-key-destroy')) {
  b.addEventListener('click', () => {
    destroyKey = b.dataset.key;
    document.getElementById('destroy-confirm').hidden = false;
    document.getElementById('destroy-password').focus();
  });
}
const destroyGo = document.getElementById('destroy-go');
if (destroyGo) destroyGo.addEventListener('click', async () => {
  if (!destroyKey) return;
  destroyGo.disabled = true; say('Destroying the old key…');
  const r = await call('POST', '/api/encryption/old-keys/' + encodeURIComponent(destroyKey) + '/destroy', {password: document.getElementById('destroy-password').value}, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); destroyGo.disabled = false; return; }
  location.reload();
});
const policyForm = document.getElementById('policy-form');
if (policyForm) policyForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const days = parseInt(f.get('rotation_days') || '0', 10);
  const body = {old_keys: f.get('old_keys'), destroy_after_days: parseInt(f.get('destroy_after_days') || '0', 10), rotation_interval_seconds: days > 0 ? days * 86400 : null, on_deactivated: f.get('on_deactivated') || 'wait'};
  const r = await call('PUT', '/api/encryption/policy', body, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  location.reload();
});
document.getElementById('password-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  const r = await call('POST', '/api/account/password', {current_password: f.get('current_password'), new_password: f.get('new_password')}, true);
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  location.href = '/login';
});
const initial = document.getElementById('state').textContent;
if (['encrypting', 'rekeying', 'decrypting', 'locked'].includes(initial)) {
  setInterval(async () => {
    const r = await fetch('/api/encryption', {credentials: 'same-origin'});
    if (!r.ok) return;
    const st = await r.json();
    if (st.state !== initial) { location.reload(); return; }
    const lr = document.getElementById('lock-reasons');
    if (lr && st.lock_reasons) {
      lr.replaceChildren(...st.lock_reasons.map((r) => {
        const li = document.createElement('li'), b = document.createElement('strong');
        b.textContent = r.server; li.append(b, ': ' + r.reason); return li;
      }));
    }
    if (st.progress) {
      document.getElementById('progress-box').hidden = false;
      document.getElementById('progress').value = st.progress.percent;
      const p = st.progress, m = (b) => (b / 1048576).toFixed(1) + ' MiB';
      document.getElementById('progress-text').textContent = p.percent.toFixed(1) + '% — ' + m(p.done_bytes) + ' of ' + m(p.total_bytes) +
        (p.bytes_per_second != null ? ', ' + (p.bytes_per_second / 1048576).toFixed(1) + ' MiB/s' : '') +
        (p.eta_seconds != null ? ', about ' + p.eta_seconds + ' s left' : '');
    }
  }, 1000);
}
// Grow: the disk grew (a VM disk extended): extend the volume to its end.
const grow = document.getElementById('grow');
if (grow) grow.addEventListener('click', async () => {
  grow.disabled = true; say('Growing the volume…');
  const r = await call('POST', '/api/volume/grow');
  grow.disabled = false;
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  location.reload();
});
// Recovery key (break-glass): status and trade-off, make / remove (admin password), the key
// shown once, and "Unlock with recovery key" while locked.
function showRecoveryKey(key, text) {
  document.getElementById('recovery').hidden = false;
  document.getElementById('recovery-key').textContent = key;
  document.getElementById('recovery-shown').hidden = false;
  say(text, 'ok');
}
(async () => {
  const box = document.getElementById('recovery');
  const r = await call('GET', '/api/encryption/recovery-key');
  if (!r.ok || !r.body) return;
  const st = r.body, state = document.getElementById('state').textContent;
  if (!st.enabled && !st.can_add && state !== 'locked') return;
  box.hidden = false;
  document.getElementById('recovery-trade-off').textContent = st.trade_off;
  document.getElementById('recovery-status').textContent = st.enabled ? 'This volume has a recovery key.' : 'This volume has no recovery key (the default).';
  if (st.notice) { const n = document.getElementById('recovery-notice'); n.textContent = st.notice; n.hidden = false; }
  if (st.can_add) {
    document.getElementById('recovery-controls').hidden = false;
    document.getElementById('recovery-add').textContent = st.enabled ? 'Replace the recovery key' : 'Make a recovery key';
    document.getElementById('recovery-remove').hidden = !st.enabled;
  }
  if (state === 'locked' && st.enabled) document.getElementById('recovery-unlock').hidden = false;
})();
const recoveryAdd = document.getElementById('recovery-add');
if (recoveryAdd) recoveryAdd.addEventListener('click', async () => {
  recoveryAdd.disabled = true; say('Making the recovery key…');
  const r = await call('POST', '/api/encryption/recovery-key', {password: document.getElementById('recovery-password').value}, true);
  recoveryAdd.disabled = false;
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  document.getElementById('recovery-password').value = '';
  document.getElementById('recovery-status').textContent = 'This volume has a recovery key.';
  document.getElementById('recovery-remove').hidden = false;
  showRecoveryKey(r.body.recovery_key, r.body.replaced ? 'A new recovery key was made; the previous one no longer opens the volume.' : 'The recovery key was made.');
});
const recoveryRemove = document.getElementById('recovery-remove');
if (recoveryRemove) recoveryRemove.addEventListener('click', async () => {
  recoveryRemove.disabled = true; say('Removing the recovery key…');
  const r = await call('DELETE', '/api/encryption/recovery-key', {password: document.getElementById('recovery-password').value}, true);
  recoveryRemove.disabled = false;
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  location.reload();
});
const recoveryUnlock = document.getElementById('recovery-unlock');
if (recoveryUnlock) recoveryUnlock.addEventListener('submit', async (e) => {
  e.preventDefault();
  const go = document.getElementById('recovery-unlock-go');
  go.disabled = true; say('Checking the recovery key (this takes a few seconds)…');
  const r = await call('POST', '/api/encryption/unlock', {recovery_key: document.getElementById('recovery-unlock-key').value}, true);
  go.disabled = false;
  if (!r.ok) { say((r.body && r.body.error) || ('HTTP ' + r.status), 'error'); return; }
  location.reload();
});

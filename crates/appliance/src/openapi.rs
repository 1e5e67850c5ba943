//! The OpenAPI 3.1 document served at /api/openapi.json. Tests check that every operation in
//! it is routed and that every routed API endpoint is in it.

use serde_json::{Value, json};

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

/// The operations: (path, method).
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (p, item) in paths {
            if let Some(item) = item.as_object() {
                for m in item.keys().filter(|k| *k != "parameters") {
                    out.push((p.clone(), m.clone()));
                }
            }
        }
    }
    out
}

/// The document.
pub fn document() -> Value {
    let mut doc = base_document();
    if let (Some(paths), Value::Object(more)) = (doc["paths"].as_object_mut(), recovery_paths()) {
        paths.extend(more);
    }
    doc
}

/// The recovery key's operations (crate::recovery).
fn recovery_paths() -> Value {
    let r = |s: &str| json!({"$ref": format!("#/components/schemas/{s}")});
    json!({
            "/api/encryption/recovery-key": {
                "get": {"summary": "The recovery key (break-glass): whether the volume has one, whether one can be made now, and the trade-off in words",
                    "responses": {"200": ok_json("the recovery key's status (never the key)", json!({"type": "object", "properties": {
                        "enabled": {"type": "boolean"}, "can_add": {"type": "boolean"},
                        "notice": {"type": ["string", "null"], "description": "set when a scheduled rotation removed the recovery key"},
                        "trade_off": {"type": "string"}}})),
                        "401": err("not logged in"), "409": err("no data volume is attached")}},
                "post": {"summary": "Make a recovery key (replacing the one there is): a LUKS2 argon2id keyslot that opens the volume without any KMIP server (also with cryptsetup); answered once, stored nowhere; takes the admin password again; audited",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("PasswordReentry")}}},
                    "responses": {"200": ok_json("the new recovery key, shown once", json!({"type": "object", "properties": {
                        "recovery_key": {"type": "string", "description": "8 groups of 6 digits, dash-separated; each group is a multiple of 11"},
                        "replaced": {"type": "boolean"}, "trade_off": {"type": "string"}}})),
                        "401": err("not logged in"), "403": err("password missing or wrong, or no CSRF token"),
                        "409": err("the volume is locked, plain or converting, or its header area has no room"), "429": err("too many wrong passwords from this address")}},
                "delete": {"summary": "Remove the recovery key: its keyslot leaves the header and its area is overwritten; takes the admin password again; audited",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("PasswordReentry")}}},
                    "responses": {"200": ok_json("removed (false: there was none)", json!({"type": "object", "properties": {"removed": {"type": "boolean"}}})),
                        "401": err("not logged in"), "403": err("password missing or wrong, or no CSRF token"),
                        "409": err("the volume is locked or converting"), "429": err("too many wrong passwords from this address")}}},
            "/api/encryption/unlock": {"post": {
                "summary": "Unlock with the recovery key while locked: no KMIP server is asked; a conversion under way resumes; audited",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["recovery_key"],
                    "properties": {"recovery_key": {"type": "string", "description": "as shown; spaces and dashes are ignored"}}}}}},
                "responses": {"200": ok_json("unlocked; the body is the new status", r("EncryptionStatus")), "400": err("not a recovery key (a mistyped group is named)"),
                    "401": err("not logged in"), "403": err("the recovery key opens no keyslot of the volume, or no CSRF token"),
                    "409": err("not locked, held for the administrator's decision, or another recovery key operation runs")}}}
    })
}

fn base_document() -> Value {
    let r = |s: &str| json!({"$ref": format!("#/components/schemas/{s}")});
    let start = |what: &str| {
        json!({
            "summary": what,
            "requestBody": {"required": false, "content": {"application/json": {"schema": r("ConversionScope")}}},
            "responses": {
                "202": ok_json("started; the body is the new status", r("EncryptionStatus")),
                "400": err("the body is not {\"full\": true|false}"),
                "401": err("not logged in"),
                "403": err("browser request without the CSRF token"),
                "409": err("not allowed now; the message says why and what to do"),
                "503": err("no data volume attached"),
            }
        })
    };
    let content_unavailable =
        err("the content volume is locked (the reason is in the message) or not attached");
    let read_only = json!({"type": ["object", "null"], "description": "the content is read-only: the volume key is Deactivated (or Compromised, confirmed) on the KMIP server; it may decrypt, never protect new data. Content writes answer 423 until a Rekey finished", "properties": {
                        "key_id": {"type": "string"}, "key_state": {"enum": ["Deactivated", "Compromised"]}, "since": {"type": "string", "format": "date-time"},
                        "reason": {"type": "string"}, "rekey": {"enum": ["started", "wait"]}}});
    let compromised_key = json!({"type": ["object", "null"], "description": "a Compromised volume key that keeps the volume locked until POST /api/encryption/read-only/confirm", "properties": {
                        "key_id": {"type": "string"}, "reason": {"type": "string"}}});
    let confirm_path = json!({"post": {
                "summary": "Confirm, with the admin password, that the volume may be opened read-only with its Compromised key (to Rekey it); lasts until the appliance stops; audited",
                "requestBody": {"required": true, "content": {"application/json": {"schema": r("PasswordReentry")}}},
                "responses": {"202": ok_json("confirmed; the unlock is tried again at once", json!({"type": "object", "properties": {"key_id": {"type": "string"}, "confirmed": {"type": "boolean"}}})),
                    "401": err("not logged in"), "403": err("password missing or wrong, or no CSRF token"),
                    "409": err("no Compromised key waits for a confirmation"), "429": err("too many wrong passwords from this address")}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "atrest appliance API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Storage > Encryption of the atrest appliance. Log in with POST /api/session and send the token as `Authorization: Bearer TOKEN`. Errors are JSON {\"error\": \"...\"}, a sentence that says what failed and what to do next."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Login": {"type": "object", "required": ["username", "password"], "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
                "Token": {"type": "object", "properties": {"token": {"type": "string"}, "token_type": {"const": "Bearer"}, "expires_after_idle_seconds": {"type": "integer"}, "expires_after_seconds": {"type": "integer"}, "password_change_required": {"type": "boolean"}}},
                "PasswordChange": {"type": "object", "required": ["current_password", "new_password"], "properties": {"current_password": {"type": "string"}, "new_password": {"type": "string", "minLength": crate::auth::MIN_PASSWORD_LEN}}},
                "Certificate": {"type": ["object", "null"], "properties": {"subject": {"type": "string"}, "issuer": {"type": "string"}, "not_after": {"type": "string"}, "days_left": {"type": ["integer", "null"]}, "expiring": {"type": "boolean"}}},
                "KmipSettings": {"type": "object", "description": "Never contains the password, the passphrase or a key.", "properties": {
                    "servers": {"type": "array", "items": {"type": "object", "properties": {"host": {"type": "string"}, "port": {"type": "integer"}}}},
                    "server_name": {"type": ["string", "null"]}, "username": {"type": ["string", "null"]},
                    "password_set": {"type": "boolean"}, "passphrase_set": {"type": "boolean"},
                    "client_format": {"enum": ["pkcs12", "pem"]},
                    "ca": r("Certificate"), "client_certificate": r("Certificate"),
                    "source": {"enum": ["manual", "embedded"]}, "fingerprint": {"type": "string"}}},
                "KmipSettingsInput": {"type": "object", "description": "Absent fields keep the saved value; an empty server_name or username clears it.", "properties": {
                    "servers": {"type": "array", "items": {"type": "string", "description": "HOST or HOST:PORT"}},
                    "port": {"type": "integer", "default": 5696}, "server_name": {"type": "string"},
                    "username": {"type": "string"}, "password": {"type": "string"}, "passphrase": {"type": "string"},
                    "ca_pem": {"type": "string"}, "client_cert_pem": {"type": "string"}, "client_key_pem": {"type": "string"},
                    "client_p12_base64": {"type": "string"}}},
                "KmipSettingsForm": {"type": "object", "properties": {
                    "hosts": {"type": "string", "description": "comma-separated HOST or HOST:PORT"}, "port": {"type": "integer"},
                    "server_name": {"type": "string"}, "username": {"type": "string"}, "password": {"type": "string"},
                    "passphrase": {"type": "string"}, "ca": {"type": "string", "format": "binary"},
                    "client_cert": {"type": "string", "format": "binary"}, "client_key": {"type": "string", "format": "binary"}}},
                "Step": {"type": "object", "properties": {"name": {"enum": ["tcp", "tls", "certificates", "kmip-version", "create", "activate", "get", "get-attributes", "revoke", "destroy"]}, "title": {"type": "string"}, "status": {"enum": ["ok", "warning", "failed", "skipped"]}, "detail": {"type": "string"}, "class": {"type": "string"}}},
                "TestReport": {"type": "object", "properties": {"ok": {"type": "boolean"}, "tested_at": {"type": "string", "format": "date-time"}, "fingerprint": {"type": "string"}, "summary": {"type": "string"},
                    "servers": {"type": "array", "items": {"type": "object", "properties": {"server": {"type": "string"}, "ok": {"type": "boolean"}, "steps": {"type": "array", "items": r("Step")}}}}}},
                "EncryptionStatus": {"type": "object", "required": ["state"], "properties": {
                    "state": {"enum": ["plain", "encrypting", "encrypted", "locked", "rekeying", "decrypting"]},
                    "pending": {"type": ["string", "null"], "description": "while locked: the conversion that resumes after unlock"},
                    "progress": {"type": ["object", "null"], "properties": {"done_bytes": {"type": "integer"}, "total_bytes": {"type": "integer"}, "percent": {"type": "number"}, "bytes_per_second": {"type": ["number", "null"]}, "eta_seconds": {"type": ["integer", "null"]}}},
                    "key_id": {"type": ["string", "null"]}, "servers": {"type": "array", "items": {"type": "string"}},
                    "cipher": {"type": ["string", "null"]},
                    "lock_reasons": {"type": "array", "items": {"type": "object", "properties": {"server": {"type": "string"}, "class": {"type": "string"}, "reason": {"type": "string"}}}},
                    "last_error": {"type": ["string", "null"]},
                    "last_test": {"oneOf": [r("TestReport"), {"type": "null"}]},
                    "last_test_current": {"type": "boolean"},
                    "encrypt": {"type": "object", "properties": {"allowed": {"type": "boolean"}, "reason": {"type": ["string", "null"]}}},
                    "settings": {"oneOf": [r("KmipSettings"), {"type": "null"}]},
                    "warnings": {"type": "array", "items": {"type": "string"}},
                    "volume_attached": {"type": "boolean"},
                    "volume": {"type": ["object", "null"], "description": "the content volume: volume (state, data_size, sector_size, key_bits, uuid), space (capacity, used, reserve: bytes; filesystem_free: free bytes of the file system under an image file, null for a block device; growable: bytes the disk grew beyond the data segment, which POST /api/volume/grow adds), last_conversion, key_check, alerts, next_retry_at, unlock_attempts"},
                    "policy": r("KeyPolicy"),
                    "old_keys": {"type": "array", "items": r("OldKey")},
                    "read_only": read_only,
                    "compromised_key": compromised_key}},
                "KeyPolicy": {"type": "object", "required": ["old_keys"], "properties": {
                    "old_keys": {"enum": ["keep", "revoke", "destroy"], "description": "what happens to a key when a Rekey or Decrypt retires it: left Active, revoked (Deactivated), or revoked and destroyed after destroy_after_days"},
                    "destroy_after_days": {"type": "integer", "minimum": 0, "maximum": 36500, "default": 0},
                    "rotation_interval_seconds": {"type": ["integer", "null"], "minimum": crate::keylife::MIN_ROTATION_SECONDS, "description": "scheduled Rekey; null: off"},
                    "on_deactivated": {"enum": ["wait", "rekey"], "default": "wait", "description": "when the volume key is found Deactivated (or Compromised, confirmed) and the content is read-only: wait for the administrator's Rekey, or start one at once"}}},
                "OldKey": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"enum": ["Active", "Deactivated", "Destroyed"], "description": "last known state on the KMIP server"},
                    "servers": {"type": "array", "items": {"type": "string"}}, "server": {"type": ["string", "null"]},
                    "retired_at": {"type": "string", "format": "date-time"}, "retired_unix": {"type": "integer"},
                    "last_error": {"type": ["string", "null"]}}},
                "AuditEventInput": {"type": "object", "required": ["session", "kind", "text"], "properties": {
                    "session": {"type": "string", "maxLength": 256}, "kind": {"type": "string", "maxLength": 64},
                    "text": {"type": "string", "maxLength": 65536}, "actor": {"type": "string", "default": "api"},
                    "time": {"type": "string", "format": "date-time", "description": "default: now"}}},
                "AuditEvent": {"type": "object", "properties": {"seq": {"type": "integer"}, "time": {"type": "string", "format": "date-time"},
                    "session": {"type": "string"}, "actor": {"type": "string"}, "kind": {"type": "string"}, "text": {"type": "string"}, "hash": {"type": "string"}}},
                "AuditPage": {"type": "object", "properties": {"total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                    "next_offset": {"type": ["integer", "null"]}, "events": {"type": "array", "items": r("AuditEvent")}}},
                "PasswordReentry": {"type": "object", "required": ["password"], "properties": {"password": {"type": "string"},
                    "full": {"type": "boolean", "description": "Decrypt: also overwrite the free space (as ConversionScope)"}}},
                "ConversionScope": {"type": "object", "properties": {"full": {"type": "boolean", "default": false,
                    "description": "also overwrite the free space; by default only the space the content store has in use is converted, and free space keeps what it held (deleted content in plaintext after Encrypt)"}}},
                "Settings": {"type": "object", "properties": {"settings": {"type": "object", "additionalProperties": true,
                    "description": "key → true/false, number, text, or {\"base64\": \"...\"} for bytes"}}},
                "Recording": {"type": "object", "properties": {"id": {"type": "string"}, "session": {"type": "string"}, "size": {"type": "integer"},
                    "sha256": {"type": "string"}, "created": {"type": "string", "format": "date-time"}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/session": {
                "post": {"summary": "Log in: a token for `Authorization: Bearer`", "security": [],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("Login")}}},
                    "responses": {"200": ok_json("logged in", r("Token")), "400": err("not a login body"), "401": err("wrong username or password"), "429": err("too many wrong passwords from this address; see Retry-After"), "503": err("too many password checks at once; see Retry-After")}},
                "delete": {"summary": "Log out (ends this token)", "responses": {"204": {"description": "logged out"}, "401": err("not logged in")}}
            },
            "/api/account/password": {
                "post": {"summary": "Change the admin password (ends every session)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("PasswordChange")}}},
                    "responses": {"200": {"description": "changed"}, "400": err("new password unusable"), "401": err("not logged in"), "403": err("current password wrong, or no CSRF token")}}
            },
            "/api/encryption": {
                "get": {"summary": "State, progress, key id, servers, cipher, last test, lock reasons",
                    "responses": {"200": ok_json("the status", r("EncryptionStatus")), "401": err("not logged in")}}
            },
            "/api/encryption/kmip": {
                "get": {"summary": "The saved KMIP settings (no secrets)",
                    "responses": {"200": ok_json("the settings", r("KmipSettings")), "401": err("not logged in"), "404": err("nothing saved yet")}},
                "put": {"summary": "Save the KMIP settings; uploads are validated (CA parsed, PKCS#12 opened with its passphrase, PEM key matched)",
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": r("KmipSettingsInput")},
                        "multipart/form-data": {"schema": r("KmipSettingsForm")}}},
                    "responses": {"200": ok_json("saved", r("KmipSettings")), "400": err("missing or malformed field"), "401": err("not logged in"), "403": err("no CSRF token"), "413": err("upload too large"), "415": err("wrong content type"), "422": err("a certificate, key or passphrase does not work")}}
            },
            "/api/encryption/test": {
                "post": {"summary": "Test every configured KMIP server step by step (TCP, TLS, certificates, version, key life cycle)",
                    "responses": {"200": ok_json("the report (ok may be false)", r("TestReport")), "401": err("not logged in"), "409": err("nothing saved yet, or a test is running")}}
            },
            "/api/encryption/encrypt": {"post": start("Encrypt the volume with a new key (needs a passing test of the current settings)")},
            "/api/encryption/rekey": {"post": start("Re-encrypt the volume under a new key; when the volume has a recovery key, a new one for the new key replaces it in the same header commit and is answered once as `recovery_key` beside the status (a scheduled rotation removes it instead)")},
            "/api/encryption/move": {"post": start("Move to these settings (a recovery key is renewed as by Rekey): Rekey onto the KMIP server of the saved settings (they must have passed Save and Test and name none of the servers that hold the volume key now); the old key is retired per the key policy on the old server, whose settings are kept until the move finished")},
            "/api/encryption/decrypt": {"post": {
                "summary": "Decrypt the volume (turn encryption off); takes the admin password again",
                "requestBody": {"required": true, "content": {"application/json": {"schema": r("PasswordReentry")}}},
                "responses": {"202": ok_json("started", r("EncryptionStatus")), "401": err("not logged in"),
                    "403": err("password missing or wrong, or no CSRF token"), "409": err("not possible in this state")}}},
            "/api/encryption/policy": {"put": {
                "summary": "Set the key policy: what happens to retired keys, and the scheduled rotation interval (applied to the old keys at once; audited)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": r("KeyPolicy")}}},
                "responses": {"200": ok_json("saved; the body is the new status", r("EncryptionStatus")), "401": err("not logged in"),
                    "403": err("no CSRF token"), "422": err("not a valid policy (e.g. a rotation interval under 60 s)")}}},
            "/api/encryption/old-keys/{id}/revoke": {"post": {
                "summary": "Revoke (Deactivate) an old key on the KMIP server; audited",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": ok_json("revoked (or already); the body is the new status", r("EncryptionStatus")), "401": err("not logged in"),
                    "403": err("no CSRF token"), "404": err("not an old key of this volume"), "502": err("the KMIP server refused or could not be reached")}}},
            "/api/encryption/old-keys/{id}/destroy": {"post": {
                "summary": "Destroy an old key on the KMIP server (revoked first): crypto-shredding, backups made under it become unreadable; takes the admin password again; audited",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": r("PasswordReentry")}}},
                "responses": {"200": ok_json("destroyed; the body is the new status", r("EncryptionStatus")), "401": err("not logged in"),
                    "403": err("password missing or wrong, or no CSRF token"), "404": err("not an old key of this volume"),
                    "429": err("too many wrong passwords from this address"), "502": err("the KMIP server refused or could not be reached")}}},
            "/api/audit/verify": {"get": {
                "summary": "Check the whole audit history: its hash chain, and its seal under a key derived from the volume key when encrypted",
                "responses": {"200": ok_json("the check (ok may be false)", json!({"type": "object", "properties": {
                    "ok": {"type": "boolean"}, "events": {"type": "integer"}, "sealed": {"type": "boolean"},
                    "first_bad": {"type": ["object", "null"], "properties": {"seq": {"type": "integer"}, "reason": {"type": "string"}}},
                    "checked_at": {"type": "string", "format": "date-time"}}})),
                    "401": err("not logged in"), "503": err("the content is locked")}}},
            "/api/encryption/resume": {"post": {
                "summary": "Resume: a conversion stopped on an error, or a volume held locked because its header failed its authentication (the header is accepted as it is and signed again); resuming a decryption takes the admin password again",
                "requestBody": {"required": false, "content": {"application/json": {"schema": r("PasswordReentry")}}},
                "responses": {"202": ok_json("resumed", r("EncryptionStatus")), "401": err("not logged in"),
                    "403": err("password missing or wrong (decryption), or no CSRF token"), "409": err("nothing to resume, or the key could not be fetched")}}},
            "/api/encryption/read-only/confirm": confirm_path,
            "/api/volume/grow": {"post": {
                "summary": "Grow: extend the content volume's data segment to the size of its device, after the disk or image grew (plain or encrypted; the header is signed under the volume key); the content store uses the new space at once. The appliance also does this at every start",
                "responses": {"200": ok_json("grown, or already the size of the device", json!({"type": "object", "properties": {
                        "grown": {"type": "boolean"}, "old_data_size": {"type": "integer"}, "data_size": {"type": "integer", "description": "bytes of data after"}}})),
                    "401": err("not logged in"), "403": err("no CSRF token"),
                    "409": err("the volume is locked, a conversion is under way, or the device is smaller than the volume"),
                    "503": err("no data volume is attached")}}},
            "/api/audit": {
                "post": {"summary": "Append one audit event, or an array of up to 1000, in order",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [r("AuditEventInput"), {"type": "array", "items": r("AuditEventInput")}]}}}},
                    "responses": {"201": ok_json("appended", json!({"type": "object", "properties": {"first_seq": {"type": "integer"}, "last_seq": {"type": "integer"}, "count": {"type": "integer"}}})),
                        "400": err("not an event"), "401": err("not logged in"), "403": err("no CSRF token"), "423": err("read-only: the volume key is no longer Active; Rekey"), "503": content_unavailable.clone(), "507": err("the volume is full")}},
                "get": {"summary": "Query the audit history: by session, time range and words, one page at a time",
                    "parameters": [
                        {"name": "session", "in": "query", "schema": {"type": "string"}},
                        {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "at or after"},
                        {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "before"},
                        {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "every word must occur (case-insensitive, whole words)"},
                        {"name": "order", "in": "query", "schema": {"enum": ["newest", "oldest"], "default": "newest"}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}],
                    "responses": {"200": ok_json("one page", r("AuditPage")), "400": err("a parameter is malformed"), "401": err("not logged in"), "503": content_unavailable.clone()}}
            },
            "/api/config": {
                "get": {"summary": "The appliance configuration (key → value)",
                    "responses": {"200": ok_json("every setting", r("Settings")), "401": err("not logged in"), "503": content_unavailable.clone()}},
                "put": {"summary": "Set (or, with null, remove) settings, all at once",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": true}}}},
                    "responses": {"200": ok_json("every setting after the change", r("Settings")), "400": err("a key or value is not acceptable"), "401": err("not logged in"), "403": err("no CSRF token"), "423": err("read-only: the volume key is no longer Active; Rekey"), "503": content_unavailable.clone(), "507": err("the volume is full")}}
            },
            "/api/recordings": {
                "get": {"summary": "List the recordings",
                    "responses": {"200": ok_json("the recordings", json!({"type": "object", "properties": {"recordings": {"type": "array", "items": r("Recording")}}})), "401": err("not logged in"), "503": content_unavailable.clone()}}
            },
            "/api/recordings/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}}],
                "get": {"summary": "Download a recording; `Range: bytes=a-b` (or a-, -n) for a part",
                    "responses": {"200": {"description": "the recording", "content": {"application/octet-stream": {}}},
                        "206": {"description": "the requested part, with Content-Range", "content": {"application/octet-stream": {}}},
                        "400": err("bad id"), "401": err("not logged in"), "404": err("no such recording"), "416": err("the range cannot be satisfied"), "503": content_unavailable.clone()}},
                "put": {"summary": "Upload (or replace) a recording, streamed: chunked transfer or Content-Length; it appears, replacing the older version, only when the whole body arrived and was committed (201); a cancelled, stalled or cut-off upload publishes nothing",
                    "parameters": [{"name": "session", "in": "query", "required": true, "schema": {"type": "string"}}],
                    "requestBody": {"required": true, "content": {"application/octet-stream": {}}},
                    "responses": {"201": ok_json("stored", r("Recording")), "400": err("bad id or session, or the upload was cut off"), "401": err("not logged in"), "403": err("no CSRF token"), "408": err("the body stopped arriving for the body timeout; nothing was kept"), "413": err("larger than the volume"), "423": err("read-only: the volume key is no longer Active; Rekey"), "503": err("locked, or every upload slot is taken (Retry-After)"), "507": err("the volume, or the disk under it, is full")}},
                "delete": {"summary": "Delete a recording and reclaim its space",
                    "responses": {"204": {"description": "deleted"}, "400": err("bad id"), "401": err("not logged in"), "403": err("no CSRF token"), "404": err("no such recording"), "423": err("read-only: the volume key is no longer Active; Rekey"), "503": content_unavailable.clone()}}
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}, "401": err("not logged in")}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn operations_are_methods() {
        for (p, m) in super::operations() {
            assert!(
                ["get", "put", "post", "delete"].contains(&m.as_str()),
                "{p} {m}"
            );
        }
    }
}

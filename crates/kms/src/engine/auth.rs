//! Authentication of a request (KMIP 1.4 §6.6 Authentication, §2.1.2 Credential): the TLS
//! client certificate and the request header's Username and Password must name the same
//! registered client.

use super::*;

impl Engine {
    /// The owner (client name) the request acts for, or why it may not act.
    pub(super) fn authenticate(
        &self,
        session: &mut Session,
        credential: Option<&Credential>,
    ) -> Result<String, String> {
        let Some(fp) = &session.certificate else {
            return Err("no TLS client certificate".into());
        };
        // A client removed (`atrest kms remove-client`) or added by another process since the
        // registry was read: read it again, so that a removed client's open connections are
        // refused from their next request.
        let stale = self.clients.read().is_stale();
        if stale && !self.reload_clients() {
            return Err("the client registry cannot be read; see the server log".into());
        }
        let known = self.clients.read().by_certificate(fp).is_some();
        if !known {
            // Perhaps added by `atrest kms add-client` since the server started.
            self.reload_clients();
        }
        let clients = self.clients.read();
        let Some(client) = clients.by_certificate(fp) else {
            return Err(format!(
                "the client certificate (SHA-256 {fp}) is not registered to any client"
            ));
        };
        let (username, password) = match credential {
            None => {
                return Err(format!(
                    "no Credential in the request header (client {})",
                    client.name
                ));
            }
            Some(Credential::UsernamePassword { username, password }) => (username, password),
            Some(Credential::Other {
                credential_type, ..
            }) => {
                return Err(format!(
                    "Credential Type {credential_type} is not supported; send Username and Password"
                ));
            }
            Some(_) => return Err("unsupported Credential".into()),
        };
        if *username != client.username {
            return Err(format!(
                "username {:?} does not belong to the certificate's client {:?}",
                clip(username),
                client.name
            ));
        }
        let Some(password) = password else {
            return Err(format!("no password for username {:?}", clip(username)));
        };
        if let Some((name, cached)) = &session.verified
            && *name == client.name
            && crypto::ct_eq(cached.as_bytes(), password.expose().as_bytes())
        {
            return Ok(client.name.clone());
        }
        if client.password.verify(password.expose()) {
            session.verified = Some((
                client.name.clone(),
                Zeroizing::new(password.expose().to_owned()),
            ));
            Ok(client.name.clone())
        } else {
            Err(format!("wrong password for username {:?}", clip(username)))
        }
    }

    /// Reads the client registry again from its file; false (logged) when it cannot be read,
    /// and the registry in memory stays.
    fn reload_clients(&self) -> bool {
        let reloaded = self.clients.read().reload();
        match reloaded {
            Ok(c) => {
                self.set_clients(c);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reloading the client registry failed");
                false
            }
        }
    }
}

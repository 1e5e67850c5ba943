//! The state changes of an object: Activate (KMIP 1.4 §4.19), Revoke (§4.20) and Destroy
//! (§4.21), following the key state machine of KMIP 1.4 §3.22 (State): Pre-Active → Active →
//! Deactivated or Compromised → Destroyed (Compromised). Destroy of an Active object is refused:
//! Revoke it first.

use super::*;

impl Engine {
    pub(super) fn activate(&self, owner: &str, v: ProtocolVersion, uid: &str) -> OpResult {
        self.update(owner, v, uid, |r, t| {
            let s = State(r.state);
            if s != State::PRE_ACTIVE {
                return Err(wrong_state(v, "Activate", s));
            }
            r.state = State::ACTIVE.0;
            r.activation_date = Some(t);
            Ok(())
        })?;
        Ok(ResponsePayload::Activate {
            unique_identifier: uid.to_owned(),
        })
    }

    pub(super) fn revoke(
        &self,
        owner: &str,
        v: ProtocolVersion,
        uid: &str,
        code: RevocationReasonCode,
        message: Option<String>,
        occurrence: Option<i64>,
    ) -> OpResult {
        self.update(owner, v, uid, |r, t| {
            let s = State(r.state);
            let compromise = code == RevocationReasonCode::KEY_COMPROMISE
                || code == RevocationReasonCode::CA_COMPROMISE;
            if compromise {
                r.state = match s {
                    State::PRE_ACTIVE | State::ACTIVE | State::DEACTIVATED => State::COMPROMISED.0,
                    State::DESTROYED => State::DESTROYED_COMPROMISED.0,
                    _ => return Err(wrong_state(v, "Revoke (compromise)", s)),
                };
                r.compromise_date = Some(t);
                r.compromise_occurrence_date = Some(occurrence.unwrap_or(t));
            } else {
                match s {
                    State::PRE_ACTIVE | State::ACTIVE => {
                        r.state = State::DEACTIVATED.0;
                        r.deactivation_date = Some(t);
                    }
                    _ => return Err(wrong_state(v, "Revoke", s)),
                }
            }
            r.revocation = Some((code.0, message.map(|m| m.chars().take(1024).collect())));
            Ok(())
        })?;
        Ok(ResponsePayload::Revoke {
            unique_identifier: uid.to_owned(),
        })
    }

    pub(super) fn destroy(&self, owner: &str, v: ProtocolVersion, uid: &str) -> OpResult {
        self.update(owner, v, uid, |r, t| {
            let s = State(r.state);
            r.state = match s {
                State::PRE_ACTIVE | State::DEACTIVATED => State::DESTROYED.0,
                State::COMPROMISED => State::DESTROYED_COMPROMISED.0,
                State::ACTIVE => {
                    return Err(wrong_state(
                        v,
                        "Destroy of an Active object (Revoke it first)",
                        s,
                    ));
                }
                _ if v.is_2x() => {
                    return Err(fail(
                        ResultReason::OBJECT_DESTROYED,
                        "the object is destroyed already",
                    ));
                }
                _ => return Err(wrong_state(v, "Destroy", s)),
            };
            r.material = None;
            r.destroy_date = Some(t);
            Ok(())
        })?;
        Ok(ResponsePayload::Destroy {
            unique_identifier: uid.to_owned(),
        })
    }
}

//! The key server's request handling: arbitrary bytes through the dispatcher, as sent (the
//! authentication path), and, when they decode as a request, again with a valid credential so
//! that every operation's handling is reached. Must never panic.

#![no_main]

use std::sync::{Mutex, OnceLock};

use atrest_kmip::message::{Credential, Password, RequestMessage};
use atrest_kmip::ttlv;
use atrest_kms::datadir::DataDir;
use atrest_kms::{Engine, Session};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    engine: Engine,
    session: Mutex<Session>,
    username: String,
    password: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("atrest-kms-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = DataDir::new(&dir);
        data.open_or_init(&[]).expect("data directory");
        let c = data.add_client("fuzz").expect("client");
        let engine = atrest_kms::open_engine(&data).expect("engine");
        let clients = atrest_kms::clients::Clients::load(&data.clients_file()).expect("clients");
        let fp = clients.by_name("fuzz").expect("fuzz client").certificates[0].clone();
        Fixture {
            engine,
            session: Mutex::new(Session::new("fuzz", Some(fp))),
            username: c.username.clone(),
            password: c.password.to_string(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut session = f.session.lock().unwrap();
    let _ = f.engine.handle(&mut session, data);
    if let Ok(item) = ttlv::decode(data, f.engine.limits())
        && let Ok(mut req) = RequestMessage::from_item(&item)
    {
        req.header.authentication = Some(Credential::UsernamePassword {
            username: f.username.clone(),
            password: Some(Password::new(f.password.clone())),
        });
        let resp = f.engine.handle_item(&mut session, &req.to_item());
        let _ = resp.to_item().to_bytes();
    }
});

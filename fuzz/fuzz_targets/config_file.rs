//! Any configuration file, TOML or js-chat-server settings.json, loads or is refused with an
//! error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaychat::config::{Settings, Sources};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let dir = tempfile::tempdir().unwrap();
    let name = if kind % 2 == 0 { "relaychat.toml" } else { "settings.json" };
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    let _ = Settings::load(&Sources { config_file: Some(path), port: None });
});

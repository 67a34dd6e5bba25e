//! Registration rules: reserved names, who is admin, registration closed or by invite.

use super::*;

#[test]
fn a_reserved_name_is_hashed_but_never_registered_and_the_config_list_makes_nobody_admin() {
    let mut h = Harness::new(|s| {
        s.chat.authentication = true;
        s.chat.registration = crate::config::Registration::Open;
    });
    // Reserve "Root" without flagging any account (the harness flags `[chat] admins`, so
    // rebuild the hub's view: reserved by config, admin set empty).
    h.hub.reserved_names.insert("Root".into());
    let stranger = h.connect(None);
    h.chat(stranger, "/register Root password123");
    assert!(matches!(&h.effects[..], [Effect::CreateAccount { name, reserved: true, .. }] if name == "Root"));
    h.effects = h.hub.account_created(stranger, Ok(false), h.now);
    assert_eq!(h.texts_to(stranger), ["Username exists."]);
    h.chat(stranger, "/register Someone password123");
    assert!(matches!(&h.effects[..], [Effect::CreateAccount { reserved: false, .. }]));
    // Logged in under the reserved name (say the password were known): still no admin powers.
    let root = h.connect(None);
    h.effects = h.hub.login_checked(root, "Root".into(), true, h.now);
    h.chat(root, "/kick Someone");
    assert_eq!(h.texts_to(root), ["You do not have permission to use /kick."]);
    // Once the operator flags the account, the same session may kick.
    h.hub.set_admins(HashSet::from(["Root".to_string()]));
    h.chat(root, "/kick Nobody");
    assert_eq!(h.texts_to(root), ["User \"Nobody\" not found."]);
}

#[test]
fn registration_closed_or_by_invite_only() {
    let mut h = Harness::new(|s| {
        s.chat.authentication = true;
        s.chat.registration = crate::config::Registration::Closed;
    });
    let c = h.connect(None);
    h.chat(c, "/register Alice password123");
    assert_eq!(h.texts_to(c), [crate::hub::chat::REGISTRATION_CLOSED]);
    h.chat(c, "/login Alice password123");
    assert!(matches!(&h.effects[..], [Effect::CheckLogin { .. }]), "login still works");

    let mut h = Harness::new(|s| {
        s.chat.authentication = true;
        s.chat.registration = crate::config::Registration::Invite;
    });
    let uninvited = h.connect(None);
    h.chat(uninvited, "/register Alice password123");
    assert_eq!(h.texts_to(uninvited), [crate::hub::chat::REGISTRATION_NEEDS_INVITE]);
    let invited = h.connect_with_pass("m.pass");
    assert_eq!(h.frames_to(invited)[1], json!({"type": "member-pass", "pass": "m.pass"}));
    h.chat(invited, "/register Alice password123");
    assert!(matches!(&h.effects[..], [Effect::CreateAccount { reserved: false, .. }]));
}

//! Admins are claimed by the operator (`relaychat user`), never by whoever registers first.

mod common;

use std::time::Duration;

use common::{run_cli, Client, Server};

const CONFIG: &str = "[chat]\nauthentication = true\nadmins = [\"alice\"]\n";

/// Connects and logs in; the client has seen its own "has joined.".
async fn login(server: &Server, name: &str, password: &str) -> Client {
    let mut client = Client::connect(&server.url(None)).await;
    client.recv_type("heartbeat-config").await;
    client.chat(&format!("/login {name} {password}")).await;
    client.expect_system(&format!("{name} has joined.")).await;
    client
}

#[tokio::test]
async fn a_listed_admin_name_is_the_operators_to_create_and_only_then_admin() {
    let server = Server::start(CONFIG);
    // A stranger tries to claim the listed admin name: the protocol's "Username exists.", and
    // nothing was created (the password does not log in).
    let mut stranger = Client::connect(&server.url(None)).await;
    stranger.recv_type("heartbeat-config").await;
    stranger.chat("/register alice strangerpw1").await;
    stranger.expect_system("Username exists.").await;
    stranger.chat("/login alice strangerpw1").await;
    stranger.expect_system("Login failed.").await;
    stranger.chat("/register bob bobpassword").await;
    stranger.expect_system("Registered. Please /login.").await;

    // The operator creates alice while the server runs; the password comes on stdin.
    let added = run_cli(&server, &["user", "add", "alice"], "alicepass99\n");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert_eq!(String::from_utf8_lossy(&added.stdout).trim(), "created account alice (admin)");
    let again = run_cli(&server, &["user", "add", "alice"], "otherpass99\n");
    assert!(!again.status.success(), "an existing account is not replaced");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let short = run_cli(&server, &["user", "add", "carol"], "short\n");
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("8-32"));

    let mut bob = login(&server, "bob", "bobpassword").await;
    bob.chat("/kick alice").await;
    bob.expect_system("You do not have permission to use /kick.").await;
    let mut alice = login(&server, "alice", "alicepass99").await;
    bob.expect_system("alice has joined.").await;
    alice.chat("/kick bob").await;
    alice.expect_system("bob was kicked by alice.").await;
    bob.expect_system("You have been kicked by an admin.").await;

    // Taking the flag away works on the live session within the refresh interval.
    let off = run_cli(&server, &["user", "set-admin", "alice", "off"], "");
    assert!(off.status.success(), "{}", String::from_utf8_lossy(&off.stderr));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    alice.chat("/ban bob").await;
    alice.expect_system("You do not have permission to use /ban.").await;

    let listed = run_cli(&server, &["user", "list"], "");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("alice") && listed.contains("bob") && !listed.contains("admin"), "{listed}");
}

#[tokio::test]
async fn an_account_flagged_admin_on_the_command_line_is_admin() {
    let server = Server::start("[chat]\nauthentication = true\n");
    let added = run_cli(&server, &["user", "add", "mod1", "--admin"], "modpassword\n");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let plain = run_cli(&server, &["user", "add", "member"], "memberpass\n");
    assert!(plain.status.success());
    let mut member = login(&server, "member", "memberpass").await;
    member.chat("/ban mod1").await;
    member.expect_system("You do not have permission to use /ban.").await;
    let mut admin = login(&server, "mod1", "modpassword").await;
    admin.chat("/ban Mallory").await;
    admin.expect_system("Mallory was banned by mod1.").await;
    // A flag set later (set-admin on) reaches a logged-in session too.
    assert!(run_cli(&server, &["user", "set-admin", "member", "on"], "").status.success());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    member.chat("/unban Mallory").await;
    member.expect_system("Mallory has been unbanned.").await;
    let missing = run_cli(&server, &["user", "set-admin", "nobody", "on"], "");
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no account"));
}

#[tokio::test]
async fn registration_attempts_per_address_are_bounded() {
    let server = Server::start(
        "[chat]\nauthentication = true\nadmins = [\"alice\"]\nmax_messages_per_second = 50\n\
         [network]\nregister_attempts_per_ip = 3\nregister_window_s = 600\n",
    );
    let mut client = Client::connect(&server.url(None)).await;
    client.recv_type("heartbeat-config").await;
    client.chat("/register first password123").await;
    client.expect_system("Registered. Please /login.").await;
    client.chat("/register first password123").await;
    client.expect_system("Username exists.").await;
    client.chat("/register alice password123").await;
    client.expect_system("Username exists.").await;
    // The fourth attempt from this address is refused before any lookup, whatever the name.
    client.chat("/register second password123").await;
    client.expect_system("Too many registration attempts from this IP. Limit is 3 per 600 seconds.").await;
    // Another connection from the same address shares the allowance; logins are not affected.
    let mut other = Client::connect(&server.url(None)).await;
    other.recv_type("heartbeat-config").await;
    other.chat("/register third password123").await;
    other.expect_system("Too many registration attempts from this IP. Limit is 3 per 600 seconds.").await;
    other.chat("/login first password123").await;
    other.expect_system("first has joined.").await;
}

async fn timed_register(client: &mut Client, name: &str, expected: &str) -> Duration {
    let started = std::time::Instant::now();
    client.chat(&format!("/register {name} password123")).await;
    client.expect_system(expected).await;
    started.elapsed()
}

/// A taken or reserved name is answered after the same argon2 hash as a new one: the reply time
/// does not say which names exist.
#[tokio::test]
async fn a_taken_name_costs_the_same_hash_as_a_new_one() {
    let server = Server::start(
        "[chat]\nauthentication = true\nadmins = [\"alice\"]\nmax_messages_per_second = 50\n\
         [network]\nregister_attempts_per_ip = 100\n",
    );
    let mut client = Client::connect(&server.url(None)).await;
    client.recv_type("heartbeat-config").await;
    client.chat("/register taken password123").await;
    client.expect_system("Registered. Please /login.").await;
    let (mut new, mut taken, mut reserved) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..5 {
        new.push(timed_register(&mut client, &format!("fresh{i}"), "Registered. Please /login.").await);
        taken.push(timed_register(&mut client, "taken", "Username exists.").await);
        reserved.push(timed_register(&mut client, "alice", "Username exists.").await);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (new, taken, reserved) = (median(&mut new), median(&mut taken), median(&mut reserved));
    eprintln!("median /register reply: new {new:?}, taken {taken:?}, reserved {reserved:?}");
    // Without the hash a taken name would answer in well under a millisecond.
    assert!(taken * 2 > new && reserved * 2 > new, "new {new:?}, taken {taken:?}, reserved {reserved:?}");
}

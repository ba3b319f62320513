//! Two real `sotto tui` processes, each in its own tmux session, chatting through a real
//! server: keys go in with `send-keys`, the screen comes back with `capture-pane`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{CLIENT, PASSPHRASE, Server, User};

/// One tmux server of this test's own (its socket name), killed when dropped.
struct Tmux(String);

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux(format!("sotto-test-{name}-{}", std::process::id()))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux runs (the test suite needs tmux: .ci/run installs it)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `sotto tui` for `home` in a session named `name` of 100×30.
    fn start(&self, name: &str, home: &Path) {
        let command = format!(
            "SOTTO_PASSPHRASE='{PASSPHRASE}' SOTTO_INSECURE_FAST_KDF=1 NO_COLOR=1 {CLIENT} --home {} tui",
            home.display()
        );
        self.run(&["new-session", "-d", "-s", name, "-x", "100", "-y", "30", &command]);
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn text(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
    }

    /// How many sessions are left (none once every client quit and the server ended).
    fn sessions(&self) -> usize {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .arg("list-sessions")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count())
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    /// Waits until the screen of `name` shows `what`; the screen.
    fn wait_for(&self, name: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen(name);
            if screen.contains(what) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{name} never showed {what:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.0).arg("kill-server").output();
    }
}

#[test]
fn two_terminal_clients_chat_through_a_real_server() {
    let server = Server::start(&["--registration", "open"]);
    let alice = User::register("alice", &server, "");
    let bob = User::register("bob", &server, "");
    let tmux = Tmux::new("chat");
    tmux.start("alice", &alice.home);
    tmux.start("bob", &bob.home);
    tmux.wait_for("alice", "connected");
    tmux.wait_for("bob", "connected");

    // Alice starts the direct chat with a command and types the first message.
    tmux.keys("alice", &[":"]);
    tmux.text("alice", &format!("dm {}", bob.address));
    tmux.keys("alice", &["Enter"]);
    tmux.text("alice", "hello from a terminal");
    tmux.keys("alice", &["Enter"]);
    tmux.wait_for("alice", "you: hello from a terminal");

    // Bob's list shows the new chat, unread; he opens it and answers.
    let screen = tmux.wait_for("bob", "alice@localhost (1)");
    assert!(screen.contains("hello from a terminal"), "the preview:\n{screen}");
    tmux.keys("bob", &["Enter"]);
    tmux.wait_for("bob", "alice@localhost: hello from a terminal");
    tmux.text("bob", "hi alice");
    tmux.keys("bob", &["Enter"]);
    let screen = tmux.wait_for("alice", "bob@localhost: hi alice");
    // Bob read her message (read receipts are off by default): hers shows delivered.
    assert!(tmux.wait_for("alice", "✓✓").contains("hello from a terminal"), "{screen}");

    // Both open the safety number screen: the same 60 digits on each side.
    let digits = |screen: &str| -> Vec<String> {
        screen
            .lines()
            .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()).to_owned())
            .filter(|l| {
                !l.is_empty()
                    && l.split_whitespace()
                        .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect()
    };
    for (who, peer) in [("alice", &bob.address), ("bob", &alice.address)] {
        tmux.keys(who, &["Escape"]);
        std::thread::sleep(Duration::from_millis(300));
        tmux.keys(who, &[":"]);
        tmux.text(who, &format!("safety {peer}"));
        tmux.keys(who, &["Enter"]);
        tmux.wait_for(who, "Safety number with");
    }
    let (a, b) = (digits(&tmux.screen("alice")), digits(&tmux.screen("bob")));
    assert_eq!(a.len(), 3, "three rows of four groups:\n{}", tmux.screen("alice"));
    assert_eq!(a, b, "both sides show the same number");
    tmux.keys("alice", &["Escape"]);
    tmux.keys("bob", &["Escape"]);
    std::thread::sleep(Duration::from_millis(300));

    // Both quit cleanly, and the terminal is given back.
    // Escape alone (followed at once by another key, a terminal reads it as Alt).
    tmux.keys("alice", &["Escape"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys("alice", &[":"]);
    tmux.text("alice", "q");
    tmux.keys("alice", &["Enter"]);
    tmux.keys("bob", &["C-c"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.sessions() > 0 {
        assert!(Instant::now() < deadline, "a client did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

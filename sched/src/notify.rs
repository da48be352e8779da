//! The systemd notify protocol (`sd_notify(3)`): `READY=1` once a service serves,
//! `WATCHDOG=1` while it is well, sent as datagrams to `$NOTIFY_SOCKET` when systemd started
//! the process as a `Type=notify` service. Without that variable nothing is sent.

use std::time::Duration;

/// Tells systemd `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`). `Ok(false)` when systemd
/// did not ask (no `$NOTIFY_SOCKET`).
pub fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path.to_string_lossy(), state).map(|()| true),
        None => Ok(false),
    }
}

/// [`notify`] to the socket `path` (`@name`: the abstract namespace).
fn notify_to(path: &str, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr).map(drop)
}

/// How often to send `WATCHDOG=1`: half of systemd's `WatchdogSec` (`$WATCHDOG_USEC`), when
/// it is meant for this process (`$WATCHDOG_PID` absent or ours); `None` when systemd
/// watches nothing.
pub fn watchdog_every() -> Option<Duration> {
    let var = |k: &str| std::env::var(k).ok();
    if let Some(pid) = var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = var("WATCHDOG_USEC")?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_the_socket_named_by_path_or_abstract_name() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("sluice-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abs = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let n = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        assert!(notify_to("/nonexistent/sluice.sock", "READY=1").is_err());
    }
}

//! The command line of `sluice-dataplane`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::Parser;

/// Inline AI-egress data plane.
#[derive(Parser, Debug)]
#[command(name = "sluice-dataplane", version)]
pub struct Args {
    /// Interface toward the clients (inline).
    #[arg(long, required_unless_present = "proxy_listen", conflicts_with = "proxy_listen")]
    pub inside: Option<String>,
    /// Interface toward the egress router (inline).
    #[arg(long, required_unless_present = "proxy_listen", conflicts_with = "proxy_listen")]
    pub outside: Option<String>,
    /// Explicit-proxy mode instead of inline, for sites where Sluice cannot sit between two
    /// ports: clients name this address as their HTTPS proxy (HTTP CONNECT), and each tunnel
    /// is classified, spliced, inspected or blocked as a diverted flow is. Needs --ca-cert and
    /// --ca-key.
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy_listen: Option<std::net::SocketAddr>,
    /// Rule file (reloaded on SIGHUP).
    #[arg(long)]
    pub rules: PathBuf,
    /// Flow records are appended here as JSON lines.
    #[arg(long, default_value = "/var/log/sluice/flows.jsonl")]
    pub flow_log: PathBuf,
    /// Hard cap of the flow table.
    #[arg(long, default_value_t = 262_144)]
    pub max_flows: usize,
    /// Most embryonic flows (handshake not complete) of one source (address and MAC): past
    /// it that source's new SYNs are dropped and summarised, so one host's SYN flood cannot
    /// evict everyone else's connection attempts. 0: a sixteenth of --max-flows.
    #[arg(long, default_value_t = 0)]
    pub max_embryonic_per_source: usize,
    /// Seconds between records of long-running flows.
    #[arg(long, default_value_t = 60)]
    pub report_interval: u64,
    /// Seconds a closed (or blocked) flow lingers before its record is written.
    #[arg(long, default_value_t = 4)]
    pub close_linger: u64,
    /// Idle timeout (s) of TCP flows whose handshake has not completed.
    #[arg(long, default_value_t = 30)]
    pub timeout_tcp_embryonic: u64,
    /// Idle timeout (s) of established TCP flows.
    #[arg(long, default_value_t = 600)]
    pub timeout_tcp_established: u64,
    /// Idle timeout (s) of UDP flows.
    #[arg(long, default_value_t = 60)]
    pub timeout_udp: u64,
    /// Idle timeout (s) of ICMP and other flows.
    #[arg(long, default_value_t = 30)]
    pub timeout_other: u64,
    /// Port I/O: `ring` (TPACKET_V2 receive ring, batched sends) or `socket` (one system call
    /// per frame each way; simpler, slower).
    #[arg(long, value_enum, default_value_t = Io::Ring)]
    pub io: Io,
    /// `kernel`: flows the engine has allowed are forwarded port to port by the kernel (BPF
    /// programs at tc ingress; the engine still sees every SYN, FIN, RST, ClientHello and DNS
    /// answer, and gets the counts back). `off`: every frame goes through the engine. If the
    /// kernel refuses the programs, the data plane warns and runs as with `off`.
    #[arg(long, value_enum, default_value_t = FastPathMode::Kernel)]
    pub fast_path: FastPathMode,
    /// TUN device toward the interception engine (e.g. `sluice0`). Without it nothing is
    /// diverted and `inspect` rules pass TCP flows (recorded as such).
    #[arg(long)]
    pub tun: Option<String>,
    /// IPv4 address of the TUN (the interception listener's).
    #[arg(long, default_value = "100.127.0.1")]
    pub tun_v4: Ipv4Addr,
    /// IPv6 address of the TUN.
    #[arg(long, default_value = "fd53:1ce::1")]
    pub tun_v6: Ipv6Addr,
    /// Port of the interception listener on the TUN addresses.
    #[arg(long, default_value_t = 15443)]
    pub listen_port: u16,
    /// Reserved source ports of upstream connections (outside the clients' ephemeral range).
    #[arg(long, default_value = "61000-65535", value_parser = port_range)]
    pub upstream_ports: (u16, u16),
    /// Enterprise CA certificate (PEM) that signs the minted leaves.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Enterprise CA private key (PEM, mode 0600).
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// Extra roots trusted for upstream servers (PEM bundle), besides Mozilla's.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Days a minted leaf is valid (never beyond the CA).
    #[arg(long, default_value_t = 7)]
    pub leaf_days: u64,
    /// Threads of the interception engine (default: half the cores, at least one; the
    /// other half is left to the kernel, which does the TCP and TLS-record work of every
    /// intercepted byte on its way in and out).
    #[arg(long)]
    pub intercept_threads: Option<usize>,
    /// Most intercepted connections at once (beyond it new diverted connections are reset).
    #[arg(long, default_value_t = 8192)]
    pub max_intercepted: usize,
    /// Most intercepted connections of one client address at once:
    /// one host's idle connections or hello flood cannot take every slot. 0: an eighth of
    /// --max-intercepted.
    #[arg(long, default_value_t = 0)]
    pub max_intercepted_per_client: usize,
    /// When the data plane is gone (exited, crashed, hung, stopped for an upgrade): `open`
    /// joins the two ports in the kernel, `closed` drops every frame: a BPF program left
    /// attached takes over once no heartbeat came for --bypass-after-ms, and counts what it
    /// did for the next data plane's record of the outage.
    #[arg(long, value_enum, default_value_t = OnFailure::Closed)]
    pub on_failure: OnFailure,
    /// Milliseconds without a heartbeat after which the failure program takes the ports.
    #[arg(long, default_value_t = 150)]
    pub bypass_after_ms: u64,
    /// In bypass, frames from or to the AI destinations the data plane learned are `held`
    /// (dropped: a bypass is no DLP hole) or `pass` like the rest.
    #[arg(long, value_enum, default_value_t = BypassAi::Hold)]
    pub bypass_ai: BypassAi,
    /// A packet thread, the TUN thread or an interception runtime that makes no progress for
    /// this long ends the process (status 70), so that systemd and a bypass act.
    #[arg(long, default_value_t = 2000)]
    pub watchdog_ms: u64,
    /// sluice-control: its Unix socket (a path, same host), or `tls://HOST:PORT`, its link
    /// address over mutual TLS with the certificates of `--fleet-dir`. With it, records are
    /// numbered, spooled and sent to control, which pushes rule sets and the identity feed.
    #[arg(long)]
    pub control: Option<String>,
    /// The enrolment directory `sluicectl fleet enrol` wrote (`ca.crt`, `dataplane.crt`,
    /// `dataplane.key`), for `--control tls://…`.
    #[arg(long)]
    pub fleet_dir: Option<PathBuf>,
    /// Name of this data plane toward control (default: the name its fleet certificate was
    /// issued for, or the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// State directory: the record spool and the last rule set pushed by control.
    #[arg(long, default_value = "/var/lib/sluice")]
    pub state_dir: PathBuf,
    /// Bound of the record spool in MiB while control is away: past it statistics and flow
    /// updates are no longer spooled (counted), the records of events still are while the
    /// disk keeps 5% free (at least 64 MiB); only then do the oldest go, counted and alarmed.
    #[arg(long, default_value_t = 1024)]
    pub spool_max_mb: u64,
    /// Records control has not acknowledged within this many ms are synced to the disk (a
    /// group commit; 0: every write; the last writes of a burst are checked within a quarter
    /// second). Writes reach the file at once, so a crash of either process loses nothing; a
    /// power loss can cost the records of that last interval.
    #[arg(long, default_value_t = 100)]
    pub spool_sync_ms: u64,
}

fn port_range(s: &str) -> std::result::Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or("expected LOW-HIGH")?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if a == 0 || a > b {
        return Err("expected 0 < LOW <= HIGH".into());
    }
    Ok((a, b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The ports are joined in the kernel while no data plane runs.
    Open,
    /// Nothing passes while no data plane runs.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BypassAi {
    /// AI destinations stay blocked in bypass.
    Hold,
    /// AI destinations pass in bypass like everything else.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FastPathMode {
    /// BPF programs forward allowed flows.
    Kernel,
    /// Every frame through the engine.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Io {
    /// TPACKET_V2 receive ring, batched sends.
    Ring,
    /// Plain per-frame system calls.
    Socket,
}

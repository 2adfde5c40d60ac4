//! `metamesh iptables`: the NAT rules that send a pod's TCP through the proxy's capture
//! listeners (Istio's sidecar model), printed in `iptables-restore` format or applied and
//! removed with `iptables-restore --noflush` in one transaction each.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// Chain of the inbound rules, jumped to from `PREROUTING`.
pub const INBOUND: &str = "METAMESH_INBOUND";
/// Chain that redirects to the virtual inbound listener.
pub const IN_REDIRECT: &str = "METAMESH_IN_REDIRECT";
/// Chain of the outbound rules, jumped to from `OUTPUT`.
pub const OUTPUT: &str = "METAMESH_OUTPUT";
/// Chain that redirects to the virtual outbound listener.
pub const REDIRECT: &str = "METAMESH_REDIRECT";
/// Every chain the rules own.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// The built-in chains the rules hook into, with the chain each jumps to.
const HOOKS: [(&str, &str); 2] = [("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)];

/// What to capture.
#[derive(clap::Args, Clone, Debug)]
pub struct Rules {
    /// Port of the virtual outbound listener (capture.outbound.address).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the virtual inbound listener (capture.inbound.address).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The uid the proxy runs as: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The gid the proxy runs as: its connections are not captured either (default: none).
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Inbound destination ports to capture, comma-separated, or `*` for all.
    #[arg(long, default_value = "*")]
    pub include_inbound_ports: String,
    /// Inbound destination ports never captured (with `--include-inbound-ports '*'`).
    #[arg(long, default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never captured, comma-separated.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destination CIDRs never captured, comma-separated (e.g. 10.96.0.0/12).
    #[arg(long, default_value = "")]
    pub exclude_outbound_cidrs: String,
}

/// Inbound ports to capture.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// All but these.
    AllBut(Vec<u16>),
    /// Only these.
    Only(Vec<u16>),
}

fn ports(flag: &str, text: &str) -> anyhow::Result<Vec<u16>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p != 0 => {
                if !out.contains(&p) {
                    out.push(p)
                }
            }
            _ => bail!("--{flag}: {part:?} is not a port (1-65535)"),
        }
    }
    Ok(out)
}

fn cidrs(flag: &str, text: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (ip, len) = part.split_once('/').unwrap_or((part, "32"));
        let ok =
            ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
        if !ok {
            bail!("--{flag}: {part:?} is not an IPv4 CIDR (a.b.c.d/len)");
        }
        out.push(format!("{ip}/{len}"));
    }
    Ok(out)
}

impl Rules {
    fn inbound(&self) -> anyhow::Result<Inbound> {
        let excluded = ports("exclude-inbound-ports", &self.exclude_inbound_ports)?;
        if self.include_inbound_ports.trim() == "*" {
            return Ok(Inbound::AllBut(excluded));
        }
        let included = ports("include-inbound-ports", &self.include_inbound_ports)?;
        Ok(Inbound::Only(
            included
                .into_iter()
                .filter(|p| !excluded.contains(p))
                .collect(),
        ))
    }

    /// The rules in `iptables-restore` format: the four chains (declared, so a restore
    /// flushes them first), their rules, and the jumps from `PREROUTING` and `OUTPUT`.
    pub fn render(&self) -> anyhow::Result<String> {
        self.render_with(&[])
    }

    /// [`Self::render`], with `delete` (the jumps an earlier run installed) removed in
    /// the same transaction.
    fn render_with(&self, delete: &[String]) -> anyhow::Result<String> {
        if self.outbound_port == 0 || self.inbound_port == 0 {
            bail!("--outbound-port and --inbound-port must not be 0");
        }
        let inbound = self.inbound()?;
        let out_ports = ports("exclude-outbound-ports", &self.exclude_outbound_ports)?;
        let out_cidrs = cidrs("exclude-outbound-cidrs", &self.exclude_outbound_cidrs)?;
        let mut s = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for line in delete {
            let _ = writeln!(s, "{line}");
        }
        // Inbound: every TCP connection arriving from outside, to the virtual inbound
        // listener, except excluded ports and the capture listeners' own ports.
        let _ = writeln!(
            s,
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        match &inbound {
            Inbound::AllBut(excluded) => {
                let mut skip = vec![self.outbound_port, self.inbound_port];
                for p in excluded {
                    if !skip.contains(p) {
                        skip.push(*p);
                    }
                }
                for p in skip {
                    let _ = writeln!(s, "-A {INBOUND} -p tcp --dport {p} -j RETURN");
                }
                let _ = writeln!(s, "-A {INBOUND} -p tcp -j {IN_REDIRECT}");
            }
            Inbound::Only(included) => {
                for p in included {
                    let _ = writeln!(s, "-A {INBOUND} -p tcp --dport {p} -j {IN_REDIRECT}");
                }
            }
        }
        // Outbound: every TCP connection the pod opens, to the virtual outbound listener,
        // except the proxy's own (no loop), loopback traffic (to 127.0.0.0/8 and to the
        // pod's own addresses, both routed through lo), and excluded ports and CIDRs.
        let _ = writeln!(
            s,
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        let _ = writeln!(
            s,
            "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        if let Some(gid) = self.proxy_gid {
            let _ = writeln!(s, "-A {OUTPUT} -m owner --gid-owner {gid} -j RETURN");
        }
        let _ = writeln!(s, "-A {OUTPUT} -o lo -j RETURN");
        for p in out_ports {
            let _ = writeln!(s, "-A {OUTPUT} -p tcp --dport {p} -j RETURN");
        }
        for c in out_cidrs {
            let _ = writeln!(s, "-A {OUTPUT} -d {c} -j RETURN");
        }
        let _ = writeln!(s, "-A {OUTPUT} -j {REDIRECT}");
        for (hook, chain) in HOOKS {
            let _ = writeln!(s, "-A {hook} -p tcp -j {chain}");
        }
        s.push_str("COMMIT\n");
        Ok(s)
    }
}

/// From `iptables -t nat -S` output: the lines that delete every jump from a built-in
/// chain into one of ours, and the chains of ours that exist.
fn existing(listing: &str) -> (Vec<String>, Vec<String>) {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("-N ") {
            if CHAINS.contains(&name.trim()) {
                chains.push(name.trim().to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let builtin = !CHAINS.iter().any(|c| rule.starts_with(&format!("{c} ")));
            let target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .unwrap_or("");
            if builtin && CHAINS.contains(&target) {
                jumps.push(format!("-D {rule}"));
            }
        }
    }
    (jumps, chains)
}

/// The rules that remove everything [`Rules::render`] installs.
fn render_clean(jumps: &[String], chains: &[String]) -> String {
    let mut s = String::from("*nat\n");
    for line in jumps {
        let _ = writeln!(s, "{line}");
    }
    for c in chains {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for c in chains {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    s
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (is iptables installed?)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{program} did not finish"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn current() -> anyhow::Result<(Vec<String>, Vec<String>)> {
    Ok(existing(&run("iptables", &["-t", "nat", "-S"], None)?))
}

/// Installs the rules, replacing any earlier installation (so running it again changes
/// nothing), in one `iptables-restore` transaction.
pub fn apply(rules: &Rules) -> anyhow::Result<String> {
    let (jumps, _) = current()?;
    let text = rules.render_with(&jumps)?;
    run("iptables-restore", &["--noflush"], Some(&text))?;
    Ok(text)
}

/// Removes the jumps and the chains, in one transaction; nothing to remove is fine.
pub fn clean() -> anyhow::Result<String> {
    let (jumps, chains) = current()?;
    if jumps.is_empty() && chains.is_empty() {
        return Ok(String::new());
    }
    let text = render_clean(&jumps, &chains);
    run("iptables-restore", &["--noflush"], Some(&text))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 1337,
            proxy_gid: None,
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            exclude_outbound_cidrs: String::new(),
        }
    }

    fn render(r: &Rules) -> String {
        r.render().unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn default_rules() {
        assert_eq!(
            render(&rules()),
            "\
*nat
:METAMESH_INBOUND - [0:0]
:METAMESH_IN_REDIRECT - [0:0]
:METAMESH_OUTPUT - [0:0]
:METAMESH_REDIRECT - [0:0]
-A METAMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A METAMESH_INBOUND -p tcp --dport 15001 -j RETURN
-A METAMESH_INBOUND -p tcp --dport 15006 -j RETURN
-A METAMESH_INBOUND -p tcp -j METAMESH_IN_REDIRECT
-A METAMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A METAMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A METAMESH_OUTPUT -o lo -j RETURN
-A METAMESH_OUTPUT -j METAMESH_REDIRECT
-A PREROUTING -p tcp -j METAMESH_INBOUND
-A OUTPUT -p tcp -j METAMESH_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn exclusions_and_included_ports() {
        let mut r = rules();
        r.proxy_uid = 2000;
        r.proxy_gid = Some(2001);
        r.exclude_inbound_ports = "22, 15000,22".into();
        r.exclude_outbound_ports = "53".into();
        r.exclude_outbound_cidrs = "10.96.0.0/12,169.254.169.254".into();
        assert_eq!(
            render(&r),
            "\
*nat
:METAMESH_INBOUND - [0:0]
:METAMESH_IN_REDIRECT - [0:0]
:METAMESH_OUTPUT - [0:0]
:METAMESH_REDIRECT - [0:0]
-A METAMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A METAMESH_INBOUND -p tcp --dport 15001 -j RETURN
-A METAMESH_INBOUND -p tcp --dport 15006 -j RETURN
-A METAMESH_INBOUND -p tcp --dport 22 -j RETURN
-A METAMESH_INBOUND -p tcp --dport 15000 -j RETURN
-A METAMESH_INBOUND -p tcp -j METAMESH_IN_REDIRECT
-A METAMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A METAMESH_OUTPUT -m owner --uid-owner 2000 -j RETURN
-A METAMESH_OUTPUT -m owner --gid-owner 2001 -j RETURN
-A METAMESH_OUTPUT -o lo -j RETURN
-A METAMESH_OUTPUT -p tcp --dport 53 -j RETURN
-A METAMESH_OUTPUT -d 10.96.0.0/12 -j RETURN
-A METAMESH_OUTPUT -d 169.254.169.254/32 -j RETURN
-A METAMESH_OUTPUT -j METAMESH_REDIRECT
-A PREROUTING -p tcp -j METAMESH_INBOUND
-A OUTPUT -p tcp -j METAMESH_OUTPUT
COMMIT
"
        );
        r.include_inbound_ports = "20880,8080,22".into();
        let text = render(&r);
        let inbound: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A METAMESH_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A METAMESH_INBOUND -p tcp --dport 20880 -j METAMESH_IN_REDIRECT",
                "-A METAMESH_INBOUND -p tcp --dport 8080 -j METAMESH_IN_REDIRECT",
            ]
        );
    }

    #[test]
    fn bad_flags_are_named() {
        let error_of = |edit: fn(&mut Rules)| {
            let mut r = rules();
            edit(&mut r);
            r.render().err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(
            error_of(|r| r.exclude_inbound_ports = "22,ssh".into()),
            "--exclude-inbound-ports: \"ssh\" is not a port (1-65535)"
        );
        assert_eq!(
            error_of(|r| r.exclude_outbound_cidrs = "10.0.0.0/33".into()),
            "--exclude-outbound-cidrs: \"10.0.0.0/33\" is not an IPv4 CIDR (a.b.c.d/len)"
        );
        assert_eq!(
            error_of(|r| r.include_inbound_ports = "0".into()),
            "--include-inbound-ports: \"0\" is not a port (1-65535)"
        );
    }

    /// Applying again deletes the jumps the last run installed in the same transaction
    /// that re-adds them, and the chain declarations flush the old chain rules.
    #[test]
    fn a_second_apply_replaces_the_first() {
        let listing = "\
-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-N METAMESH_INBOUND
-N METAMESH_OUTPUT
-N OTHER
-A PREROUTING -p tcp -j METAMESH_INBOUND
-A PREROUTING -p tcp -j OTHER
-A OUTPUT -p tcp -j METAMESH_OUTPUT
-A METAMESH_OUTPUT -j METAMESH_REDIRECT
-A OTHER -j METAMESH_REDIRECT_NOT_OURS
";
        let (jumps, chains) = existing(listing);
        assert_eq!(
            jumps,
            [
                "-D PREROUTING -p tcp -j METAMESH_INBOUND",
                "-D OUTPUT -p tcp -j METAMESH_OUTPUT"
            ]
        );
        assert_eq!(chains, ["METAMESH_INBOUND", "METAMESH_OUTPUT"]);
        let text = rules().render_with(&jumps).unwrap_or_default();
        let mut lines = text.lines().skip(5);
        assert_eq!(
            lines.next(),
            Some("-D PREROUTING -p tcp -j METAMESH_INBOUND")
        );
        assert_eq!(lines.next(), Some("-D OUTPUT -p tcp -j METAMESH_OUTPUT"));
        assert_eq!(
            render_clean(&jumps, &chains),
            "\
*nat
-D PREROUTING -p tcp -j METAMESH_INBOUND
-D OUTPUT -p tcp -j METAMESH_OUTPUT
:METAMESH_INBOUND - [0:0]
:METAMESH_OUTPUT - [0:0]
-X METAMESH_INBOUND
-X METAMESH_OUTPUT
COMMIT
"
        );
    }
}

//! The command policy: which contract commands may run.
//!
//! Checked in this order, and the first match blocks the command (exit status 126) naming its
//! rule: the hard-deny rules (always), the `safe`-mode rules (unless `security.mode: system`),
//! `security.denylist` (`denylist[i]`), the unattended rules (commands that would wait for a
//! person), then `security.allowlist` (when set, the command must match one of its patterns).
//! Scripts a command runs (`bash x.sh`, `sh x.sh`, `./x.sh`, `source x.sh`) are read and their
//! lines checked against the same deny rules, three levels deep.

use crate::spec::{SecurityMode, SecuritySection};
use regex::Regex;
use serde::Serialize;
use std::path::Path;

/// How the run treats commands that would wait for a person.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unattended {
    /// Block likely-interactive commands; stdin is closed; `CI=1`, `GIT_TERMINAL_PROMPT=0`.
    #[default]
    Strict,
    /// `auth.interactive: true` commands run with the terminal's stdin.
    Guided,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocked {
    /// The rule that matched (`hard_deny.rm_root`, `safe.sudo`, `denylist[0]`, `allowlist`, …).
    pub rule: String,
    /// Its pattern.
    pub pattern: String,
    /// Where it matched: `command`, or `script PATH line N`.
    pub location: String,
    /// The text that matched.
    pub text: String,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blocked by rule {} (pattern `{}`) in {}: `{}`",
            self.rule, self.pattern, self.location, self.text
        )
    }
}

struct Rule {
    name: String,
    re: Regex,
    /// The command is allowed when this also matches (`docker login --password-stdin`).
    unless: Option<Regex>,
}

impl Rule {
    fn new(name: &str, re: &str, unless: Option<&str>) -> Self {
        Self {
            name: name.into(),
            re: Regex::new(re).expect("built-in rule patterns are valid"),
            unless: unless.map(|u| Regex::new(u).expect("built-in rule patterns are valid")),
        }
    }

    fn hits(&self, text: &str) -> bool {
        self.re.is_match(text) && !self.unless.as_ref().is_some_and(|u| u.is_match(text))
    }
}

/// Start of a command word: line start, after a separator, or after a prefix command.
const AT_CMD: &str = r"(?:^|[;&|(`]\s*|\$\(\s*|\b(?:sudo|env|exec|nohup|xargs|time)\s+)";
/// A system path (or the root, or home) as a whole word.
const SYS_PATH: &str = r"(?:/\*?|~/?|\$HOME/?|\$\{HOME\}/?|/(?:bin|boot|dev|etc|home|lib|lib32|lib64|opt|proc|root|sbin|srv|sys|usr|var)/?\*?)";

fn hard_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            "hard_deny.rm_root",
            &format!(
                r"\brm\s+(?:-\S+\s+)*-[a-zA-Z]*[rR][a-zA-Z]*\s+(?:-\S+\s+)*{SYS_PATH}(?:\s|$|[;&|])"
            ),
            None,
        ),
        Rule::new("hard_deny.no_preserve_root", r"--no-preserve-root\b", None),
        Rule::new(
            "hard_deny.fork_bomb",
            r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:",
            None,
        ),
        Rule::new(
            "hard_deny.disk_overwrite",
            r"(?:\bof=/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk)|>\s*/dev/(?:sd|hd|vd|xvd|nvme|mmcblk)[a-z0-9]*)",
            None,
        ),
        Rule::new(
            "hard_deny.recursive_perms_root",
            &format!(
                r"\b(?:chmod|chown)\s+(?:-\S+\s+)*-[a-zA-Z]*R[a-zA-Z]*\s+\S+\s+{SYS_PATH}(?:\s|$|[;&|])"
            ),
            None,
        ),
    ]
}

fn safe_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            "safe.sudo",
            &format!(r"{AT_CMD}(?:sudo|doas|su)(?:\s|$)"),
            None,
        ),
        Rule::new(
            "safe.docker_prune",
            r"\bdocker\s+(?:system|volume|image|container|network|builder|buildx)\s+prune\b",
            None,
        ),
        Rule::new("safe.mkfs", &format!(r"{AT_CMD}mkfs(?:\.\w+)?\b"), None),
        Rule::new("safe.dd", &format!(r"{AT_CMD}dd\s"), None),
        Rule::new(
            "safe.power",
            &format!(r"{AT_CMD}(?:reboot|shutdown|halt|poweroff|init\s+[06])\b"),
            None,
        ),
        Rule::new(
            "safe.systemctl",
            r"\bsystemctl\s+(?:stop|disable|mask|kill|poweroff|reboot|halt|isolate)\b",
            None,
        ),
        Rule::new("safe.kill_all", r"\bkill\s+(?:-\S+\s+)*-1(?:\s|$)", None),
        Rule::new(
            "safe.pipe_to_shell",
            r"\b(?:curl|wget)\b[^|;&]*\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b",
            None,
        ),
        Rule::new("safe.brew_uninstall", r"\bbrew\s+uninstall\b", None),
        Rule::new(
            "safe.git_force_push",
            r"\bgit\s+push\b[^;&|]*(?:--force\b|\s-f\b)",
            None,
        ),
    ]
}

fn unattended_rules() -> Vec<Rule> {
    vec![
        Rule::new(
            "unattended.docker_login",
            r"\bdocker\s+login\b",
            Some(r"--password-stdin|--password\b|\s-p\s"),
        ),
        Rule::new(
            "unattended.gh_auth_login",
            r"\bgh\s+auth\s+login\b",
            Some(r"--with-token"),
        ),
        Rule::new("unattended.npm_login", r"\bnpm\s+(?:login|adduser)\b", None),
        Rule::new(
            "unattended.hf_login",
            r"\b(?:huggingface-cli|hf)\s+(?:auth\s+)?login\b",
            Some(r"--token\b"),
        ),
        Rule::new(
            "unattended.interactive_program",
            &format!(r"{AT_CMD}(?:vi|vim|nvim|nano|emacs|less|more|top|htop|passwd|man)(?:\s|$)"),
            None,
        ),
    ]
}

/// Script paths a command runs (`bash x.sh`, `sh x.sh`, `source x.sh`, `. x.sh`, `./x`).
pub fn scripts_in(cmd: &str) -> Vec<String> {
    static RE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(
            r#"(?:^|[;&|(]\s*|\s)(?:(?:bash|sh|source|\.)\s+(?:-[a-zA-Z]+\s+)*([^\s;&|()'"]+)|(\./[^\s;&|()'"]+))"#,
        )
        .expect("valid")
    });
    RE.captures_iter(cmd)
        .filter_map(|c| c.get(1).or(c.get(2)).map(|m| m.as_str().to_string()))
        .filter(|p| !p.starts_with('-') && !p.starts_with('$'))
        .collect()
}

/// A compiled policy.
pub struct Policy {
    mode: SecurityMode,
    hard: Vec<Rule>,
    safe: Vec<Rule>,
    deny: Vec<Rule>,
    unattended_rules: Vec<Rule>,
    allow: Vec<(String, Regex)>,
    pub unattended: Unattended,
}

impl Policy {
    /// Compile `security:`; a bad regex is an error naming its list and index.
    pub fn new(sec: &SecuritySection, unattended: Unattended) -> Result<Self, String> {
        let compile = |list: &str, i: usize, p: &str| {
            Regex::new(p).map_err(|e| format!("security.{list}[{i}]: invalid regex {p:?}: {e}"))
        };
        let deny = sec
            .denylist
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(Rule {
                    name: format!("denylist[{i}]"),
                    re: compile("denylist", i, p)?,
                    unless: None,
                })
            })
            .collect::<Result<_, String>>()?;
        let allow = sec
            .allowlist
            .iter()
            .enumerate()
            .map(|(i, p)| Ok((p.clone(), compile("allowlist", i, p)?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            mode: sec.mode,
            hard: hard_rules(),
            safe: safe_rules(),
            deny,
            unattended_rules: unattended_rules(),
            allow,
            unattended,
        })
    }

    /// Check one command run in `workdir`; `interactive` is true for `auth.interactive`
    /// commands (allowed to prompt only under [`Unattended::Guided`]).
    pub fn check(&self, cmd: &str, workdir: &Path, interactive: bool) -> Result<(), Blocked> {
        if interactive && self.unattended == Unattended::Strict {
            return Err(Blocked {
                rule: "unattended.interactive_auth".into(),
                pattern: "auth.interactive: true".into(),
                location: "command".into(),
                text: cmd.into(),
            });
        }
        let skip_unattended = interactive && self.unattended == Unattended::Guided;
        self.check_text(cmd, "command", skip_unattended)?;
        self.audit_scripts(cmd, workdir, skip_unattended, 0)?;
        if !self.allow.is_empty() && !self.allow.iter().any(|(_, re)| re.is_match(cmd)) {
            return Err(Blocked {
                rule: "allowlist".into(),
                pattern: self
                    .allow
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "),
                location: "command (matches no allowlist pattern)".into(),
                text: cmd.into(),
            });
        }
        Ok(())
    }

    fn rules(&self, skip_unattended: bool) -> impl Iterator<Item = &Rule> {
        let safe = (self.mode == SecurityMode::Safe).then_some(&self.safe);
        let unattended = (!skip_unattended).then_some(&self.unattended_rules);
        self.hard
            .iter()
            .chain(safe.into_iter().flatten())
            .chain(self.deny.iter())
            .chain(unattended.into_iter().flatten())
    }

    fn check_text(&self, text: &str, location: &str, skip_unattended: bool) -> Result<(), Blocked> {
        for rule in self.rules(skip_unattended) {
            if rule.hits(text) {
                return Err(Blocked {
                    rule: rule.name.clone(),
                    pattern: rule.re.as_str().to_string(),
                    location: location.into(),
                    text: text.trim().chars().take(300).collect(),
                });
            }
        }
        Ok(())
    }

    fn audit_scripts(
        &self,
        cmd: &str,
        workdir: &Path,
        skip_unattended: bool,
        depth: usize,
    ) -> Result<(), Blocked> {
        if depth >= 3 {
            return Ok(());
        }
        for script in scripts_in(cmd) {
            let path = workdir.join(&script);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() || meta.len() > 1 << 20 {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (n, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                self.check_text(
                    l,
                    &format!("script {script} line {}", n + 1),
                    skip_unattended,
                )?;
                self.audit_scripts(l, workdir, skip_unattended, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Whether an environment variable's name says it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "COOKIE",
        "SESSION",
        "PRIVATE",
    ]
    .iter()
    .any(|w| n.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: SecurityMode) -> Policy {
        Policy::new(
            &SecuritySection {
                mode,
                denylist: vec![r"\bcurl\b".into()],
                ..Default::default()
            },
            Unattended::Strict,
        )
        .unwrap()
    }

    fn rule(p: &Policy, cmd: &str) -> Option<String> {
        p.check(cmd, Path::new("/nonexistent"), false)
            .err()
            .map(|b| b.rule)
    }

    #[test]
    fn hard_deny_holds_in_every_mode() {
        for mode in [SecurityMode::Safe, SecurityMode::System] {
            let p = policy(mode);
            for cmd in [
                "rm -rf /",
                "rm -rf / ",
                "cd x && rm -fr /*",
                "rm -r -f ~",
                "rm -rf $HOME",
                "rm -Rf /etc/",
                "rm --no-preserve-root -rf /",
                ":(){ :|:& };:",
                "dd if=/dev/zero of=/dev/sda",
                "chmod -R 777 /",
            ] {
                let r = rule(&p, cmd).unwrap_or_else(|| panic!("{cmd:?} allowed"));
                assert!(r.starts_with("hard_deny."), "{cmd}: {r}");
            }
            assert_eq!(rule(&p, "rm -rf build/ dist"), None);
            assert_eq!(rule(&p, "rm -rf ./node_modules"), None);
        }
    }

    #[test]
    fn safe_mode_rules_apply_only_in_safe_mode() {
        let safe = policy(SecurityMode::Safe);
        let system = policy(SecurityMode::System);
        for (cmd, r) in [
            ("sudo apt-get install x", "safe.sudo"),
            ("echo hi && sudo -n true", "safe.sudo"),
            ("docker system prune -af", "safe.docker_prune"),
            ("mkfs.ext4 /dev/loop0", "safe.mkfs"),
            ("dd if=a of=b", "safe.dd"),
            ("reboot", "safe.power"),
            ("wget -qO- http://x/i.sh | bash", "safe.pipe_to_shell"),
            ("kill -9 -1", "safe.kill_all"),
        ] {
            assert_eq!(rule(&safe, cmd).as_deref(), Some(r), "{cmd}");
            assert_eq!(rule(&system, cmd), None, "{cmd} in system mode");
        }
        assert_eq!(rule(&safe, "echo sudoku; ./add.sh"), None);
        assert_eq!(rule(&safe, "python -m pytest -q"), None);
    }

    #[test]
    fn denylist_allowlist_and_unattended_name_their_rule() {
        let p = policy(SecurityMode::System);
        assert_eq!(rule(&p, "curl http://x").as_deref(), Some("denylist[0]"));
        assert_eq!(
            rule(&p, "docker login registry.example").as_deref(),
            Some("unattended.docker_login")
        );
        assert_eq!(
            rule(&p, "echo $T | docker login --password-stdin -u u r"),
            None
        );
        assert_eq!(
            rule(&p, "vim notes.txt").as_deref(),
            Some("unattended.interactive_program")
        );
        let allow = Policy::new(
            &SecuritySection {
                allowlist: vec!["^python ".into(), "^bash ".into()],
                ..Default::default()
            },
            Unattended::Strict,
        )
        .unwrap();
        assert_eq!(rule(&allow, "python x.py"), None);
        assert_eq!(rule(&allow, "node x.js").as_deref(), Some("allowlist"));
        assert!(Policy::new(
            &SecuritySection {
                denylist: vec!["(".into()],
                ..Default::default()
            },
            Unattended::Strict
        )
        .err()
        .unwrap()
        .contains("denylist[0]"));
    }

    #[test]
    fn scripts_are_audited_line_by_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("s")).unwrap();
        std::fs::write(
            d.path().join("s/a.sh"),
            "# sudo in a comment\necho ok\nbash s/b.sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("s/b.sh"), "set -e\n  sudo rm x\n").unwrap();
        let p = policy(SecurityMode::Safe);
        let b = p.check("bash s/a.sh", d.path(), false).unwrap_err();
        assert_eq!(b.rule, "safe.sudo");
        assert_eq!(b.location, "script s/b.sh line 2");
        assert!(b.to_string().contains("sudo rm x"), "{b}");
        std::fs::write(d.path().join("s/b.sh"), "echo fine\n").unwrap();
        assert!(p.check("bash -e s/a.sh", d.path(), false).is_ok());
    }

    #[test]
    fn interactive_auth_needs_guided_mode() {
        let mut p = policy(SecurityMode::Safe);
        let b = p.check("docker login r", Path::new("."), true).unwrap_err();
        assert_eq!(b.rule, "unattended.interactive_auth");
        p.unattended = Unattended::Guided;
        assert!(p.check("docker login r", Path::new("."), true).is_ok());
    }
}

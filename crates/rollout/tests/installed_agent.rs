//! Installed CLI agents: the recipe mechanics (runtime install through the image's package
//! manager, package install, non-interactive run with the instruction, API keys by name, logs)
//! with a local fake package, since the real agents need the internet to install.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;

/// A wheel named like mini-swe-agent whose `mini` command solves hello-world and records what it
/// was given.
fn fake_wheel(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("mini_swe_agent-1.0.0-py3-none-any.whl");
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = ZipWriter::new(file);
    let module = r#"import os, sys
def main():
    open('/app/hello.txt', 'w').write('Hello, world!')
    open('/logs/agent/seen-key.txt', 'w').write(os.environ.get('OPENAI_API_KEY', ''))
    open('/logs/agent/argv.txt', 'w').write('\n'.join(sys.argv[1:]))
"#;
    let files = [
        ("fake_mini/__init__.py", module.to_string()),
        ("mini_swe_agent-1.0.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: mini-swe-agent\nVersion: 1.0.0\n".into()),
        ("mini_swe_agent-1.0.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: rollout-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".into()),
        ("mini_swe_agent-1.0.0.dist-info/entry_points.txt", "[console_scripts]\nmini = fake_mini:main\n".into()),
    ];
    let mut record = String::new();
    for (name, content) in &files {
        zip.add(name, content.as_bytes());
        record.push_str(&format!("{name},,\n"));
    }
    record.push_str("mini_swe_agent-1.0.0.dist-info/RECORD,,\n");
    zip.add("mini_swe_agent-1.0.0.dist-info/RECORD", record.as_bytes());
    zip.finish();
    path
}

/// A minimal stored (uncompressed) zip writer: enough for a wheel, without a zip dependency in
/// the CLI's tests.
struct ZipWriter {
    out: std::fs::File,
    offset: u32,
    central: Vec<u8>,
    count: u16,
}

impl ZipWriter {
    fn new(out: std::fs::File) -> Self {
        Self {
            out,
            offset: 0,
            central: Vec::new(),
            count: 0,
        }
    }

    fn add(&mut self, name: &str, data: &[u8]) {
        let crc = crc32(data);
        let mut local = Vec::new();
        local.extend_from_slice(&0x04034b50u32.to_le_bytes());
        local.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&(data.len() as u32).to_le_bytes());
        local.extend_from_slice(&(data.len() as u32).to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        self.out.write_all(&local).unwrap();
        self.out.write_all(data).unwrap();
        let c = &mut self.central;
        c.extend_from_slice(&0x02014b50u32.to_le_bytes());
        c.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 12]);
        c.extend_from_slice(&self.offset.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        self.offset += (local.len() + data.len()) as u32;
        self.count += 1;
    }

    fn finish(mut self) {
        self.out.write_all(&self.central).unwrap();
        let mut end = Vec::new();
        end.extend_from_slice(&0x06054b50u32.to_le_bytes());
        end.extend_from_slice(&[0, 0, 0, 0]);
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        end.extend_from_slice(&self.offset.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.out.write_all(&end).unwrap();
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn an_installed_agent_is_installed_by_its_recipe_and_run_with_the_instruction() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let wheel = fake_wheel(tmp.path());
    let out = rollout_cmd()
        .env("OPENAI_API_KEY", "test-key")
        .args([
            "run",
            "-p",
            example("hello-world").to_str().unwrap(),
            "-a",
            "mini-swe-agent",
            "-m",
            "fake-model",
        ])
        .args([
            "--agent-version",
            "1.0.0",
            "--ak",
            &format!("package={}", wheel.display()),
        ])
        .args(["-o", tmp.path().to_str().unwrap(), "--job-name", "job"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trial = tmp.path().join("job/hello-world__mini-swe-agent__1");
    let r = read_json(&trial.join("result.json"));
    assert_eq!(r["reward"], 1.0, "{r}");
    assert_eq!(r["agent"]["version"], "1.0.0");
    assert_eq!(r["agent_install"]["exit_code"], 0);
    assert_eq!(
        std::fs::read_to_string(trial.join("agent/seen-key.txt")).unwrap(),
        "test-key",
        "API keys pass by name"
    );
    let argv = std::fs::read_to_string(trial.join("agent/argv.txt")).unwrap();
    assert!(argv.contains("--model\nfake-model"), "{argv}");
    assert!(
        argv.contains("--task\n") && argv.contains("hello.txt"),
        "the instruction is passed: {argv}"
    );
    assert!(trial.join("agent/setup/stdout.txt").is_file());
}

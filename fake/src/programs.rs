//! The programs a fake process can be, chosen by the base name of `ProcessSpec.path`:
//!
//! | path        | behaviour                                                             |
//! |-------------|-----------------------------------------------------------------------|
//! | `echo ARGS` | writes the arguments joined by spaces and a newline to stdout; exit 0  |
//! | `cat`       | copies stdin to stdout until stdin ends; exit 0                       |
//! | `cat FILE…` | writes files streamed into the container; exit 1 if one is missing    |
//! | `exit N`    | exits with status N (0 when absent or not a number)                   |
//! | `sleep S`   | sleeps S seconds (fractions allowed); exit 0                          |
//! | `yes-bytes N` | writes N bytes (`y\n` repeated) to stdout; exit 0                   |
//! | `stderr TEXT` | writes the arguments joined by spaces and a newline to stderr; exit 0 |
//! | `env`       | writes the process environment, one `KEY=VALUE` per line; exit 0      |
//! | `true`, `false` | exit 0, exit 1                                                    |
//! | `hostname`  | writes the container's hostname (the handle, its last 49 characters) |
//! | `whoami`    | writes the process's user name (`root` when the spec names none)     |
//! | `sh -c SCRIPT` | runs commands of this table joined by `;`, `&&`, `\|\|`, plus `id -u [USER]` and `adduser -D USER` (users are remembered per container) |
//!
//! Any other path fails to start with `ExecutableNotFound`. Signals end a process at once with
//! 128+N (143 for terminate, 137 for kill), like a shell would. With a TTY, stderr is merged
//! into stdout. Files streamed in are kept in memory per container, enough for tar round trips.
//!
//! Any other path fails to start with `ExecutableNotFound`. Signals end a process at once with
//! 128+N (143 for terminate, 137 for kill), like a shell would. With a TTY, stderr is merged
//! into stdout.

use crate::lock;
use crate::pipe::{PipeReader, PipeWriter};
use crate::process::{signal_status, FakeProcess, Interrupt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The programs a simulated process can be.
pub const PROGRAMS: &[&str] = &[
    "echo",
    "cat",
    "exit",
    "sleep",
    "yes-bytes",
    "stderr",
    "env",
    "true",
    "false",
    "sh",
    "hostname",
    "whoami",
];

/// `sleep`'s argument: a number of seconds with an optional `s`, `m`, `h` or `d` suffix.
pub(crate) fn sleep_seconds(arg: &str) -> Option<f64> {
    let (number, unit) = match arg.char_indices().last() {
        Some((i, 's')) => (&arg[..i], 1.0),
        Some((i, 'm')) => (&arg[..i], 60.0),
        Some((i, 'h')) => (&arg[..i], 3600.0),
        Some((i, 'd')) => (&arg[..i], 86400.0),
        _ => (arg, 1.0),
    };
    let seconds = number.parse::<f64>().ok()? * unit;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// Whether the simulated `sh -c` can run `script`: simulated commands joined by `;`, `&&` and
/// `||`, nothing else (no expansions, redirections, pipes or background jobs).
pub(crate) fn simulable_script(script: &str) -> bool {
    if script.contains(['$', '`', '<', '>', '(', ')', '{', '}', '*', '?']) {
        return false;
    }
    let mut command_start = true;
    for word in shell_words(script) {
        if matches!(word.as_str(), ";" | "&&" | "||") {
            command_start = true;
            continue;
        }
        if word.contains(['&', '|']) {
            return false;
        }
        if command_start {
            let name = word.rsplit('/').next().unwrap_or_default();
            let builtin = matches!(name, "id" | "adduser" | "exit");
            if !(builtin || PROGRAMS.contains(&name)) || name == "sh" {
                return false;
            }
            command_start = false;
        }
    }
    true
}

/// Splits a shell script into words and the operators `;`, `&&`, `||`.
pub(crate) fn shell_words(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    let flush = |word: &mut String, in_word: &mut bool, out: &mut Vec<String>| {
        if *in_word {
            out.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            ';' | '\n' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(";".into());
            }
            '&' | '|' if chars.peek() == Some(&c) => {
                chars.next();
                flush(&mut word, &mut in_word, &mut out);
                out.push(format!("{c}{c}"));
            }
            c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut out),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut out);
    out
}

/// What a simulated program gets: its arguments, environment and pipe ends.
pub(crate) struct Program {
    pub(crate) name: String,
    /// The container's hostname, as a Linux container has it.
    pub(crate) hostname: String,
    /// The user the process runs as (by name).
    pub(crate) user: String,
    /// Users made with `adduser` in this container (for `id -u`).
    pub(crate) users: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// For `cat FILE...`: each argument and the file's contents, if it exists.
    pub(crate) files: Vec<(String, Option<Vec<u8>>)>,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) stdin: PipeReader,
    pub(crate) stdout: PipeWriter,
    pub(crate) stderr: PipeWriter,
    pub(crate) process: Arc<FakeProcess>,
}

impl Program {
    /// Runs to the end and returns the exit status; the pipe ends close on return.
    pub(crate) fn run(mut self) -> i32 {
        match self.body() {
            Ok(code) => code,
            Err(Interrupt::Signal(signal)) => signal_status(signal),
            Err(Interrupt::BrokenPipe) => 128 + 13,
        }
    }

    pub(crate) fn body(&mut self) -> Result<i32, Interrupt> {
        let name = self.name.clone();
        let args = self.args.clone();
        self.command(&name, &args)
    }

    /// Runs one simulated command with the program's streams.
    pub(crate) fn command(&mut self, name: &str, args: &[String]) -> Result<i32, Interrupt> {
        let line = |args: &[String]| format!("{}\n", args.join(" ")).into_bytes();
        match name {
            "true" => Ok(0),
            "false" => Ok(1),
            "sh" => match args {
                [flag, script, ..] if flag == "-c" => self.shell(script),
                _ => {
                    let text = b"sh: only 'sh -c SCRIPT' is simulated\n";
                    write_all(&mut self.stderr, &self.process, text)?;
                    Ok(2)
                }
            },
            "id" => {
                let user = match args {
                    [flag] if flag == "-u" => Some("root".to_string()),
                    [flag, user] if flag == "-u" => Some(user.clone()),
                    _ => None,
                };
                let known = user.as_ref().and_then(|u| {
                    if u == "root" {
                        return Some(0);
                    }
                    let users = lock(&self.users);
                    users.iter().position(|x| x == u).map(|i| 1000 + i)
                });
                match known {
                    Some(uid) => {
                        self.write_out(format!("{uid}\n").as_bytes())?;
                        Ok(0)
                    }
                    None => {
                        let text = format!("id: '{}': no such user\n", user.unwrap_or_default());
                        write_all(&mut self.stderr, &self.process, text.as_bytes())?;
                        Ok(1)
                    }
                }
            }
            "adduser" => match args.last() {
                Some(user) if !user.starts_with('-') => {
                    lock(&self.users).insert(user.clone());
                    Ok(0)
                }
                _ => Ok(1),
            },
            "echo" => {
                let text = line(args);
                self.write_out(&text)?;
                Ok(0)
            }
            "hostname" => {
                let text = format!("{}\n", self.hostname);
                self.write_out(text.as_bytes())?;
                Ok(0)
            }
            "whoami" => {
                let text = format!("{}\n", self.user);
                self.write_out(text.as_bytes())?;
                Ok(0)
            }
            "stderr" => {
                let text = line(args);
                write_all(&mut self.stderr, &self.process, &text)?;
                Ok(0)
            }
            "env" => {
                // Later entries win, as in a real process environment.
                let mut seen = std::collections::BTreeSet::new();
                let mut kept: Vec<&String> = Vec::new();
                for entry in self.env.iter().rev() {
                    let key = entry.split('=').next().unwrap_or_default();
                    if seen.insert(key) {
                        kept.push(entry);
                    }
                }
                let text: String = kept.iter().rev().map(|e| format!("{e}\n")).collect();
                self.write_out(text.as_bytes())?;
                Ok(0)
            }
            "exit" => Ok(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
            "sleep" => {
                let seconds = args.first().and_then(|a| sleep_seconds(a)).unwrap_or(0.0);
                let deadline = Instant::now() + Duration::from_secs_f64(seconds.min(1e9));
                match self.process.sleep_until(deadline) {
                    Some(signal) => Err(Interrupt::Signal(signal)),
                    None => Ok(0),
                }
            }
            "yes-bytes" => {
                let mut left: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                let block = b"y\n".repeat(32 * 1024);
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    self.write_out(&block[..n])?;
                    left -= n as u64;
                }
                Ok(0)
            }
            "cat" if !args.is_empty() => {
                let mut status = 0;
                for name in args {
                    if name == "-" || name == "/dev/stdin" {
                        let mut buf = vec![0u8; 32 * 1024];
                        loop {
                            let n = self.stdin.read_interruptible(&mut buf, &self.process)?;
                            if n == 0 {
                                break;
                            }
                            self.write_out(&buf[..n])?;
                        }
                        continue;
                    }
                    let data = self
                        .files
                        .iter()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, d)| d.clone());
                    match data {
                        Some(data) => self.write_out(&data)?,
                        None => {
                            let text = format!("cat: {name}: No such file or directory\n");
                            write_all(&mut self.stderr, &self.process, text.as_bytes())?;
                            status = 1;
                        }
                    }
                }
                Ok(status)
            }
            "cat" => {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = self.stdin.read_interruptible(&mut buf, &self.process)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    self.write_out(&buf[..n])?;
                }
            }
            other => {
                let text = format!("sh: {other}: not found\n");
                write_all(&mut self.stderr, &self.process, text.as_bytes())?;
                Ok(127)
            }
        }
    }

    /// `sh -c`: commands joined by `;`, `&&` and `||`, words split on blanks, with single and
    /// double quotes. `exit N` ends the script.
    pub(crate) fn shell(&mut self, script: &str) -> Result<i32, Interrupt> {
        let mut status = 0;
        let mut connector = ";".to_string();
        let mut words: Vec<String> = Vec::new();
        let mut tokens = shell_words(script);
        tokens.push(";".into());
        for token in tokens {
            if matches!(token.as_str(), ";" | "&&" | "||") {
                let run = match connector.as_str() {
                    "&&" => status == 0,
                    "||" => status != 0,
                    _ => true,
                };
                if run && !words.is_empty() {
                    if words[0] == "exit" {
                        return Ok(words.get(1).and_then(|n| n.parse().ok()).unwrap_or(status));
                    }
                    let (name, args) = words.split_first().expect("not empty");
                    status = self.command(name.rsplit('/').next().unwrap_or(name), args)?;
                }
                words.clear();
                connector = token;
            } else {
                words.push(token);
            }
        }
        Ok(status)
    }

    pub(crate) fn write_out(&mut self, data: &[u8]) -> Result<(), Interrupt> {
        write_all(&mut self.stdout, &self.process, data)
    }
}

pub(crate) fn write_all(
    pipe: &mut PipeWriter,
    process: &FakeProcess,
    data: &[u8],
) -> Result<(), Interrupt> {
    let mut at = 0;
    while at < data.len() {
        at += pipe.write_interruptible(&data[at..], process)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_takes_seconds_with_an_optional_unit() {
        assert_eq!(sleep_seconds("10000d"), Some(864_000_000.0));
        assert_eq!(sleep_seconds("1.5m"), Some(90.0));
        assert_eq!(sleep_seconds("x"), None);
    }
}

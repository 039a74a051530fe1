//! Resource limits per plugin: their values, how they are written and checked, and which one a
//! stopped plugin exceeded.
//!
//! In `config.json`, the API and the server's flags a limit is written the same way:
//!
//! | limit | written as | default |
//! |---|---|---|
//! | `memory` | bytes, or a size with a 1024-based unit: `128MiB`, `128M`, `1.5 GiB` | 512 MiB |
//! | `processes` | a count of processes and threads | 512 |
//! | `open_files` | a count of open file descriptors per process | 1024 |
//! | `cpu` | cores: `0.5`, `2`, or a percentage of one core: `50%` | unlimited |
//!
//! CPU has no quota by default: the scheduler shares it, so a busy plugin slows the others
//! without taking anything for good, while a quota throttles a plugin's bursts (a plugin that
//! uses its 100 ms share early in a period waits out the rest), which shows as latency.
//!
//! and any of them as `"unlimited"`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A limit's value: a bound, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit<T> {
    /// No bound.
    Unlimited,
    /// At most this.
    At(T),
}

impl<T: Copy> Limit<T> {
    /// The bound, if there is one.
    pub fn value(&self) -> Option<T> {
        match self {
            Limit::Unlimited => None,
            Limit::At(v) => Some(*v),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Limit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::At(v) => v.fmt(f),
        }
    }
}

/// `"unlimited"`, or the value as its own JSON.
impl<T: Serialize> Serialize for Limit<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Unlimited => s.serialize_str(UNLIMITED),
            Limit::At(v) => v.serialize(s),
        }
    }
}

const UNLIMITED: &str = "unlimited";

/// A number of bytes. Shown with the largest 1024-based unit that fits ("128 MiB").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut unit = None;
        let mut scale = 1u64;
        for (i, _) in UNITS.iter().enumerate() {
            let next = 1u64 << (10 * (i + 1));
            if self.0 >= next {
                unit = Some(i);
                scale = next;
            }
        }
        match unit {
            None => write!(f, "{} bytes", self.0),
            Some(i) if self.0.is_multiple_of(scale) => write!(f, "{} {}", self.0 / scale, UNITS[i]),
            Some(i) => write!(f, "{:.1} {}", self.0 as f64 / scale as f64, UNITS[i]),
        }
    }
}

/// A share of the CPU, in thousandths of one core (`500` is half a core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cores {
    millicores: u32,
}

impl Cores {
    /// `millicores` thousandths of a core.
    pub fn from_millicores(millicores: u32) -> Cores {
        Cores { millicores }
    }

    /// In thousandths of a core.
    pub fn millicores(self) -> u32 {
        self.millicores
    }

    /// In cores.
    pub fn cores(self) -> f64 {
        f64::from(self.millicores) / 1000.0
    }
}

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.millicores == 1000 { "" } else { "s" };
        write!(f, "{} core{plural}", self.cores())
    }
}

/// A number of cores.
impl Serialize for Cores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.cores())
    }
}

/// One of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitKind {
    /// Memory (the cgroup's memory, or the data segment with rlimits).
    Memory,
    /// Processes and threads.
    Processes,
    /// Open file descriptors, per process.
    OpenFiles,
    /// CPU time per second.
    Cpu,
}

impl LimitKind {
    /// Every limit, in the order they are shown.
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Memory,
        LimitKind::Processes,
        LimitKind::OpenFiles,
        LimitKind::Cpu,
    ];

    /// The limit's name in JSON (`open_files`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::Processes => "processes",
            LimitKind::OpenFiles => "open_files",
            LimitKind::Cpu => "cpu",
        }
    }

    /// How a sentence names it: "memory limit", "process limit", ...
    fn noun(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory limit",
            LimitKind::Processes => "process limit",
            LimitKind::OpenFiles => "open-files limit",
            LimitKind::Cpu => "CPU limit",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits a plugin runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Limits {
    /// Memory (default 512 MiB).
    pub memory: Limit<Bytes>,
    /// Processes and threads together (default 512).
    pub processes: Limit<u64>,
    /// Open file descriptors per process (default 1024).
    pub open_files: Limit<u64>,
    /// CPU, as a quota of cores (default: unlimited).
    pub cpu: Limit<Cores>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: Limit::At(Bytes(512 << 20)),
            processes: Limit::At(512),
            open_files: Limit::At(1024),
            cpu: Limit::Unlimited,
        }
    }
}

/// Setters for building on the defaults: `Limits::default().with_...(..)`.
impl Limits {
    /// The same limits with [`memory`](Self::memory) set.
    pub fn with_memory(mut self, memory: Limit<Bytes>) -> Self {
        self.memory = memory;
        self
    }

    /// The same limits with [`processes`](Self::processes) set.
    pub fn with_processes(mut self, processes: Limit<u64>) -> Self {
        self.processes = processes;
        self
    }

    /// The same limits with [`open_files`](Self::open_files) set.
    pub fn with_open_files(mut self, open_files: Limit<u64>) -> Self {
        self.open_files = open_files;
        self
    }

    /// The same limits with [`cpu`](Self::cpu) set.
    pub fn with_cpu(mut self, cpu: Limit<Cores>) -> Self {
        self.cpu = cpu;
        self
    }
}

impl Limits {
    /// Parses a memory limit: bytes, a size with a 1024-based unit (`128MiB`, `128M`,
    /// `1.5GiB`), or `unlimited`.
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse_memory(s: &str) -> Result<Limit<Bytes>, String> {
        memory(&Value::String(s.to_owned()))
    }

    /// Parses a process limit: a count, or `unlimited`.
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse_processes(s: &str) -> Result<Limit<u64>, String> {
        count(LimitKind::Processes, &Value::String(s.to_owned()))
    }

    /// Parses an open-files limit: a count, or `unlimited`.
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse_open_files(s: &str) -> Result<Limit<u64>, String> {
        count(LimitKind::OpenFiles, &Value::String(s.to_owned()))
    }

    /// Parses a CPU limit: cores (`0.5`, `2`), a percentage of one core (`50%`), or
    /// `unlimited`.
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse_cpu(s: &str) -> Result<Limit<Cores>, String> {
        cpu(&Value::String(s.to_owned()))
    }

    /// One limit's value, in words ("128 MiB", "512", "0.5 cores", "unlimited").
    pub fn describe(&self, kind: LimitKind) -> String {
        match kind {
            LimitKind::Memory => self.memory.to_string(),
            LimitKind::Processes => self.processes.to_string(),
            LimitKind::OpenFiles => self.open_files.to_string(),
            LimitKind::Cpu => self.cpu.to_string(),
        }
    }
}

/// One plugin's own limits, each replacing the host's default; a limit left out keeps the
/// default. In JSON: `{"memory": "128MiB", "cpu": "50%"}`; `null` for a limit means "the
/// default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LimitOverrides {
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Limit<Bytes>>,
    /// Processes and threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Limit<u64>>,
    /// Open file descriptors per process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<Limit<u64>>,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Limit<Cores>>,
}

/// Setters for building on the defaults: `LimitOverrides::default().with_...(..)`.
impl LimitOverrides {
    /// The same overrides with [`memory`](Self::memory) set.
    pub fn with_memory(mut self, memory: Option<Limit<Bytes>>) -> Self {
        self.memory = memory;
        self
    }

    /// The same overrides with [`processes`](Self::processes) set.
    pub fn with_processes(mut self, processes: Option<Limit<u64>>) -> Self {
        self.processes = processes;
        self
    }

    /// The same overrides with [`open_files`](Self::open_files) set.
    pub fn with_open_files(mut self, open_files: Option<Limit<u64>>) -> Self {
        self.open_files = open_files;
        self
    }

    /// The same overrides with [`cpu`](Self::cpu) set.
    pub fn with_cpu(mut self, cpu: Option<Limit<Cores>>) -> Self {
        self.cpu = cpu;
        self
    }
}

impl LimitOverrides {
    /// Whether no limit is overridden.
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }

    /// `defaults` with these overrides applied.
    pub fn apply(&self, defaults: &Limits) -> Limits {
        Limits {
            memory: self.memory.unwrap_or(defaults.memory),
            processes: self.processes.unwrap_or(defaults.processes),
            open_files: self.open_files.unwrap_or(defaults.open_files),
            cpu: self.cpu.unwrap_or(defaults.cpu),
        }
    }

    /// Reads overrides from a JSON object, checking every field.
    ///
    /// # Errors
    /// Every field that is unknown or whose value is not valid, each with its message.
    pub fn from_json(value: &Value) -> Result<LimitOverrides, LimitErrors> {
        let Value::Object(map) = value else {
            return Err(LimitErrors(vec![(
                "limits".into(),
                format!(
                    "must be an object like {{\"memory\": \"128MiB\"}}, not {}",
                    short(value)
                ),
            )]));
        };
        let mut out = LimitOverrides::default();
        let mut errors = Vec::new();
        for (key, v) in map {
            let mut check = |r: Result<(), String>| {
                if let Err(e) = r {
                    errors.push((key.clone(), e));
                }
            };
            match key.as_str() {
                _ if v.is_null() && is_known(key) => {}
                "memory" => check(memory(v).map(|l| out.memory = Some(l))),
                "processes" => {
                    check(count(LimitKind::Processes, v).map(|l| out.processes = Some(l)))
                }
                "open_files" => {
                    check(count(LimitKind::OpenFiles, v).map(|l| out.open_files = Some(l)))
                }
                "cpu" => check(cpu(v).map(|l| out.cpu = Some(l))),
                _ => check(Err(
                    "is not a limit; the limits are memory, processes, open_files and cpu".into(),
                )),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(LimitErrors(errors))
        }
    }
}

impl<'de> Deserialize<'de> for LimitOverrides {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        LimitOverrides::from_json(&value).map_err(serde::de::Error::custom)
    }
}

fn is_known(key: &str) -> bool {
    LimitKind::ALL.iter().any(|k| k.as_str() == key)
}

/// Limits that could not be read: each field with what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
pub struct LimitErrors(pub Vec<(String, String)>);

/// A value in an error message: short, whatever it is.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(40).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn is_unlimited(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case(UNLIMITED))
}

/// The smallest memory limit: below it no plugin can start.
const MIN_MEMORY: u64 = 4 << 20;

fn memory(value: &Value) -> Result<Limit<Bytes>, String> {
    if is_unlimited(value) {
        return Ok(Limit::Unlimited);
    }
    let bytes = match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a whole number of bytes"))?,
        Value::String(s) => parse_size::Config::new()
            .with_binary()
            .parse_size(s.trim())
            .map_err(|e| format!("{s:?} is not a size like 128MiB or 2G ({e})"))?,
        other => {
            return Err(format!(
                "{} is not a size like \"128MiB\" or \"unlimited\"",
                short(other)
            ));
        }
    };
    if bytes < MIN_MEMORY {
        return Err(format!(
            "{} is too little; at least {} is needed",
            Bytes(bytes),
            Bytes(MIN_MEMORY)
        ));
    }
    if bytes > i64::MAX as u64 {
        return Err(format!("{bytes} bytes is too large"));
    }
    Ok(Limit::At(Bytes(bytes)))
}

fn count(kind: LimitKind, value: &Value) -> Result<Limit<u64>, String> {
    if is_unlimited(value) {
        return Ok(Limit::Unlimited);
    }
    let (min, max) = match kind {
        // The kernel's largest pid_max.
        LimitKind::Processes => (1, 4_194_304),
        // Standard streams, the host's socket and a few files; the kernel's default nr_open.
        _ => (16, 1_048_576),
    };
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{} is not a whole number or \"unlimited\"", short(value)))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range; it must be {min} to {max}"));
    }
    Ok(Limit::At(n))
}

fn cpu(value: &Value) -> Result<Limit<Cores>, String> {
    if is_unlimited(value) {
        return Ok(Limit::Unlimited);
    }
    let cores = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_suffix('%') {
                Some(pct) => pct.trim().parse::<f64>().ok().map(|p| p / 100.0),
                None => s
                    .trim_end_matches("cores")
                    .trim_end_matches("core")
                    .trim()
                    .parse::<f64>()
                    .ok(),
            }
        }
        _ => None,
    }
    .filter(|c| c.is_finite())
    .ok_or_else(|| {
        format!(
            "{} is not a number of cores like 0.5, a percentage like 50%, or \"unlimited\"",
            short(value)
        )
    })?;
    // A quota is counted in 1 ms slices of a 100 ms period.
    if !(0.01..=4096.0).contains(&cores) {
        return Err(format!(
            "{cores} cores is out of range; it must be 0.01 (1%) to 4096"
        ));
    }
    Ok(Limit::At(Cores::from_millicores(
        (cores * 1000.0).round() as u32
    )))
}

/// A limit a plugin exceeded, and how the host knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitHit {
    pub(crate) kind: LimitKind,
    /// The limit, in words ("128 MiB").
    pub(crate) limit: String,
    /// What happened, in words ("the kernel's out-of-memory killer stopped it").
    pub(crate) how: &'static str,
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin exceeded its {} of {} ({})",
            self.kind.noun(),
            self.limit,
            self.how
        )
    }
}

/// What enforces a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Enforcer {
    /// The plugin's cgroup.
    Cgroup,
    /// A resource limit (`setrlimit`) on each process.
    Rlimit,
    /// A lower scheduling priority (for CPU, where no cgroup can set a quota).
    Nice,
    /// Nothing: the limit is `unlimited`, or nothing here can enforce it.
    None,
}

/// What enforces each of a plugin's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Enforcement {
    /// Memory.
    pub memory: Enforcer,
    /// Processes.
    pub processes: Enforcer,
    /// Open files.
    pub open_files: Enforcer,
    /// CPU.
    pub cpu: Enforcer,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_use_1024_based_units_and_print_back_the_same_way() {
        let mib = |n: u64| Limit::At(Bytes(n << 20));
        assert_eq!(Limits::parse_memory("128MiB"), Ok(mib(128)));
        assert_eq!(Limits::parse_memory("128M"), Ok(mib(128)));
        assert_eq!(Limits::parse_memory("128 MB"), Ok(mib(128)));
        assert_eq!(Limits::parse_memory("1.5GiB"), Ok(mib(1536)));
        assert_eq!(Limits::parse_memory("unlimited"), Ok(Limit::Unlimited));
        assert_eq!(Limits::parse_memory("134217728"), Ok(mib(128)));
        assert_eq!(Bytes(128 << 20).to_string(), "128 MiB");
        assert_eq!(Bytes(1536 << 20).to_string(), "1.5 GiB");
        assert_eq!(Bytes(1 << 30).to_string(), "1 GiB");
        assert_eq!(Bytes(100).to_string(), "100 bytes");
    }

    #[test]
    fn cpu_is_cores_or_a_percentage_of_one() {
        let c = |m| Limit::At(Cores::from_millicores(m));
        assert_eq!(Limits::parse_cpu("0.5"), Ok(c(500)));
        assert_eq!(Limits::parse_cpu("50%"), Ok(c(500)));
        assert_eq!(Limits::parse_cpu("2 cores"), Ok(c(2000)));
        assert_eq!(Limits::parse_cpu("150 %"), Ok(c(1500)));
        assert_eq!(Cores::from_millicores(500).to_string(), "0.5 cores");
        assert_eq!(Cores::from_millicores(1000).to_string(), "1 core");
        assert!(Limits::parse_cpu("0").unwrap_err().contains("out of range"));
        assert!(Limits::parse_cpu("lots").unwrap_err().contains("\"lots\""));
        assert!(Limits::parse_cpu("NaN").is_err());
    }

    #[test]
    fn bad_values_are_refused_each_with_its_field_and_reason() {
        let err = LimitOverrides::from_json(&json!({
            "memory": "lots",
            "processes": 0,
            "open_files": -3,
            "cpu": "50%",
            "disk": 1
        }))
        .unwrap_err();
        let mut fields: Vec<&str> = err.0.iter().map(|(f, _)| f.as_str()).collect();
        // In the object's order, which serde_json keeps when a crate asks it to.
        fields.sort();
        assert_eq!(
            fields,
            ["disk", "memory", "open_files", "processes"],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("memory: \"lots\" is not a size"), "{text}");
        assert!(text.contains("processes: 0 is out of range"), "{text}");
        assert!(text.contains("disk: is not a limit"), "{text}");
        assert!(
            Limits::parse_memory("1KiB")
                .unwrap_err()
                .contains("at least 4 MiB")
        );
        assert!(LimitOverrides::from_json(&json!([1])).is_err());
    }

    #[test]
    fn overrides_replace_only_the_defaults_they_name_and_round_trip_as_json() {
        let o = LimitOverrides::from_json(&json!({
            "memory": "64MiB", "cpu": null, "processes": "unlimited"
        }))
        .unwrap();
        let limits = o.apply(&Limits::default());
        assert_eq!(limits.memory, Limit::At(Bytes(64 << 20)));
        assert_eq!(limits.processes, Limit::Unlimited);
        assert_eq!(limits.open_files, Limits::default().open_files);
        assert_eq!(limits.cpu, Limits::default().cpu);
        let text = serde_json::to_value(o).unwrap();
        assert_eq!(text, json!({"memory": 67108864, "processes": "unlimited"}));
        let back: LimitOverrides = serde_json::from_value(text).unwrap();
        assert_eq!(back, o);
        assert!(LimitOverrides::default().is_empty());
    }

    #[test]
    fn a_hit_says_which_limit_in_words() {
        let hit = LimitHit {
            kind: LimitKind::Memory,
            limit: Bytes(128 << 20).to_string(),
            how: "the kernel's out-of-memory killer stopped it",
        };
        assert_eq!(
            hit.to_string(),
            "plugin exceeded its memory limit of 128 MiB (the kernel's out-of-memory killer stopped it)"
        );
    }
}

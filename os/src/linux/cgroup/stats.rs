//! Turning cgroup statistics files into Garden's metrics, as guardian does (runc's stats).

use super::files::for_each_pair;
use trellis_core::api::{CpuStat, MemoryStat};

/// Copies every `memory.stat` key that has a same-named `MemoryStat` field; others are
/// ignored, and fields the kernel does not provide stay 0.
pub fn memory_stat(text: &str) -> MemoryStat {
    let mut m = MemoryStat::default();
    for_each_pair(text, |key, value| {
        let field = match key {
            "active_anon" => &mut m.active_anon,
            "active_file" => &mut m.active_file,
            "cache" => &mut m.cache,
            "hierarchical_memory_limit" => &mut m.hierarchical_memory_limit,
            "inactive_anon" => &mut m.inactive_anon,
            "inactive_file" => &mut m.inactive_file,
            "mapped_file" => &mut m.mapped_file,
            "pgfault" => &mut m.pgfault,
            "pgmajfault" => &mut m.pgmajfault,
            "pgpgin" => &mut m.pgpgin,
            "pgpgout" => &mut m.pgpgout,
            "rss" => &mut m.rss,
            "total_active_anon" => &mut m.total_active_anon,
            "total_active_file" => &mut m.total_active_file,
            "total_cache" => &mut m.total_cache,
            "total_inactive_anon" => &mut m.total_inactive_anon,
            "total_inactive_file" => &mut m.total_inactive_file,
            "total_mapped_file" => &mut m.total_mapped_file,
            "total_pgfault" => &mut m.total_pgfault,
            "total_pgmajfault" => &mut m.total_pgmajfault,
            "total_pgpgin" => &mut m.total_pgpgin,
            "total_pgpgout" => &mut m.total_pgpgout,
            "total_rss" => &mut m.total_rss,
            "total_unevictable" => &mut m.total_unevictable,
            "unevictable" => &mut m.unevictable,
            "swap" => &mut m.swap,
            "hierarchical_memsw_limit" => &mut m.hierarchical_memsw_limit,
            "total_swap" => &mut m.total_swap,
            "anon" => &mut m.anon,
            "file" => &mut m.file,
            "swapcached" => &mut m.swapcached,
            _ => return,
        };
        *field = value;
    });
    m
}

/// v1: `total_rss + total_cache + total_swap − total_inactive_file`, floored at 0.
pub fn usage_toward_limit_v1(m: &MemoryStat) -> u64 {
    (m.total_rss + m.total_cache + m.total_swap).saturating_sub(m.total_inactive_file)
}

/// v2: `file + anon + swapcached − inactive_file`, floored at 0.
pub fn usage_toward_limit_v2(m: &MemoryStat) -> u64 {
    (m.file + m.anon + m.swapcached).saturating_sub(m.inactive_file)
}

/// v2 `cpu.stat` (microseconds) in nanoseconds.
pub fn cpu_stat_v2(text: &str) -> CpuStat {
    let mut cpu = CpuStat::default();
    for_each_pair(text, |key, value| match key {
        "usage_usec" => cpu.usage = value.saturating_mul(1000),
        "user_usec" => cpu.user = value.saturating_mul(1000),
        "system_usec" => cpu.system = value.saturating_mul(1000),
        _ => {}
    });
    cpu
}

/// v1 `cpuacct.usage_all`: per-CPU user and system nanoseconds; usage is their sum (what
/// `cpuacct.usage` reports), so one file gives all three figures.
pub fn cpuacct_usage_all_v1(text: &str) -> CpuStat {
    let mut cpu = CpuStat::default();
    for line in text.lines().skip(1) {
        let mut fields = line.split_ascii_whitespace().skip(1);
        let user: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        let system: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        cpu.user = cpu.user.saturating_add(user);
        cpu.system = cpu.system.saturating_add(system);
    }
    cpu.usage = cpu.user.saturating_add(cpu.system);
    cpu
}

/// v1 `cpuacct.stat` is in clock ticks (USER_HZ, 100 on Linux).
pub fn cpuacct_stat_v1(text: &str) -> (u64, u64) {
    const NANOS_PER_TICK: u64 = 1_000_000_000 / 100;
    let (mut user, mut system) = (0, 0);
    for_each_pair(text, |key, value| match key {
        "user" => user = value.saturating_mul(NANOS_PER_TICK),
        "system" => system = value.saturating_mul(NANOS_PER_TICK),
        _ => {}
    });
    (user, system)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_STAT: &str = "cache 4096\nrss 8192\nrss_huge 0\nshmem 4096\nmapped_file 0\n\
        dirty 0\nwriteback 0\nswap 0\npgpgin 10\npgpgout 5\npgfault 100\npgmajfault 1\n\
        inactive_anon 4096\nactive_anon 8192\ninactive_file 1024\nactive_file 0\n\
        unevictable 0\nhierarchical_memory_limit 67108864\nhierarchical_memsw_limit 67108864\n\
        total_cache 40960\ntotal_rss 81920\ntotal_swap 4096\ntotal_inactive_file 2048\n\
        total_active_file 0\n";

    #[test]
    fn v1_memory_stat_fills_the_classic_keys() {
        let m = memory_stat(V1_STAT);
        assert_eq!(m.cache, 4096);
        assert_eq!(m.rss, 8192);
        assert_eq!(m.pgfault, 100);
        assert_eq!(m.hierarchical_memory_limit, 64 << 20);
        assert_eq!(m.hierarchical_memsw_limit, 64 << 20);
        assert_eq!(m.total_rss, 81920);
        assert_eq!(m.anon, 0);
        assert_eq!(usage_toward_limit_v1(&m), 81920 + 40960 + 4096 - 2048);
    }

    #[test]
    fn v2_memory_stat_fills_its_keys() {
        let text = "anon 1000\nfile 500\nkernel 99\nshmem 0\nactive_anon 800\n\
            inactive_anon 200\nactive_file 100\ninactive_file 400\nunevictable 0\n\
            swapcached 10\npgfault 7\npgmajfault 0\n";
        let m = memory_stat(text);
        assert_eq!((m.anon, m.file, m.swapcached), (1000, 500, 10));
        assert_eq!(m.inactive_file, 400);
        assert_eq!(m.rss, 0);
        assert_eq!(usage_toward_limit_v2(&m), 1000 + 500 + 10 - 400);
    }

    #[test]
    fn usage_toward_limit_is_floored_at_zero() {
        let m = MemoryStat {
            total_inactive_file: 10,
            inactive_file: 10,
            ..MemoryStat::default()
        };
        assert_eq!(usage_toward_limit_v1(&m), 0);
        assert_eq!(usage_toward_limit_v2(&m), 0);
    }

    #[test]
    fn cpu_figures_are_nanoseconds() {
        let cpu = cpu_stat_v2("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n");
        assert_eq!(
            (cpu.usage, cpu.user, cpu.system),
            (1_500_000, 1_000_000, 500_000)
        );
        let all = cpuacct_usage_all_v1("cpu user system\n0 100 20\n1 50 5\n");
        assert_eq!((all.usage, all.user, all.system), (175, 150, 25));
        assert_eq!(
            cpuacct_stat_v1("user 3\nsystem 2\n"),
            (30_000_000, 20_000_000)
        );
    }
}

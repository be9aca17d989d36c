//! Committed bytes are real memory, and `empty_cache` gives them back to the
//! OS. Its own test binary: nothing else runs in this process to move RSS.

use headroom::alloc::{Arena, ArenaConfig, Tag};

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn committed_pages_show_in_rss_and_return_after_empty_cache() {
    const SIZE: usize = 256 << 20;
    let arena = Arena::new(ArenaConfig::default()).unwrap();
    let before = rss_bytes();
    let block = arena.alloc(SIZE, Tag::Activation, "rss").unwrap();
    let committed = rss_bytes();
    assert_eq!(arena.stats().reserved.current, SIZE);
    assert!(committed - before >= SIZE * 95 / 100, "commit made {} resident", committed - before);
    drop(block);
    assert!(rss_bytes() >= before + SIZE * 95 / 100, "a freed block stays cached");
    assert_eq!(arena.empty_cache(), SIZE);
    let after = rss_bytes();
    assert_eq!(arena.stats().reserved.current, 0);
    assert!(committed - after >= SIZE * 95 / 100, "empty_cache returned only {}", committed - after);
}

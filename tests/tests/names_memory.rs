//! What a peer's name costs: a 100k-entry `peers_file` (a fleet's) loaded through the
//! agent's own loader, with the live heap counted by a counting allocator — bytes,
//! deterministic, not a timing. Before names were compact and shared, the same file
//! kept about 100 MB alive (RSS 33 -> 130 MB, above the DaemonSet's limit).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_hundred_thousand_names_cost_under_twenty_megabytes() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.json");
    {
        let mut text = String::from("{\"peers\": {");
        for i in 0..100_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            key[31] = 1;
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!(
                "\"{key}\": {{\"name\": \"device-{i:06}-laptop\", \"user\": \"user{i}\", \"email\": \"user{i}@example.com\", \"tags\": [\"office\", \"team-{}\"]}}",
                i % 50
            ));
        }
        text.push_str("}}");
        std::fs::write(&path, text).unwrap();
    }
    let before = LIVE.load(Ordering::Relaxed);
    let names = wgpulse::peers::names::load(&path).unwrap();
    let cost = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(names.len(), 100_000);
    let per_peer = cost / 100_000;
    eprintln!(
        "100k names: {} KiB live, {per_peer} bytes per peer",
        cost / 1024
    );
    assert!(per_peer < 200, "{per_peer} bytes per named peer");
    let name = names.values().next().unwrap();
    assert!(name.name().unwrap().starts_with("device-"));
    assert_eq!(name.tags().count(), 2);
}

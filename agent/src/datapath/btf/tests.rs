use super::*;

/// Builds a tiny BTF blob: struct outer { int a; union { int x; struct { short p; short q; }; }; }
/// and typedef btf_trace_t -> ptr -> proto(3 params).
fn tiny_btf() -> Vec<u8> {
    let strings = b"\0int\0outer\0a\0x\0p\0q\0btf_trace_t\0";
    let name = |s: &str| -> u32 {
        let needle = format!("\0{s}\0");
        strings
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap() as u32
            + 1
    };
    let mut types = Vec::new();
    let mut push = |words: &[u32]| {
        for w in words {
            types.extend_from_slice(&w.to_le_bytes());
        }
    };
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    // 1: int (size 4)
    push(&[name("int"), info(KIND_INT, 0), 4, 32]);
    // 2: anonymous struct { short p @0; short q @16 bits }
    push(&[
        0,
        info(KIND_STRUCT, 2),
        4,
        name("p"),
        1,
        0,
        name("q"),
        1,
        16,
    ]);
    // 3: anonymous union { int x; struct 2 }
    push(&[0, info(KIND_UNION, 2), 4, name("x"), 1, 0, 0, 2, 0]);
    // 4: struct outer { int a @0; union 3 @32 }
    push(&[
        name("outer"),
        info(KIND_STRUCT, 2),
        8,
        name("a"),
        1,
        0,
        0,
        3,
        32,
    ]);
    // 5: func proto with 3 params, 6: ptr -> 5, 7: typedef btf_trace_t -> 6
    push(&[0, info(KIND_FUNC_PROTO, 3), 0, 0, 1, 0, 1, 0, 1]);
    push(&[0, info(KIND_PTR, 0), 5]);
    push(&[name("btf_trace_t"), info(KIND_TYPEDEF, 0), 6]);
    blob(&types, strings)
}

/// A BTF blob: header, then the type and string sections.
fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut blob = Vec::new();
    blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    blob.extend_from_slice(&[1, 0]);
    for w in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&w.to_le_bytes());
    }
    blob.extend_from_slice(types);
    blob.extend_from_slice(strings);
    blob
}

#[test]
fn members_are_found_through_anonymous_unions() {
    let btf = Btf::parse(&tiny_btf()).unwrap();
    assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
    assert_eq!(btf.member_offset("outer", "x").unwrap(), 4);
    assert_eq!(btf.member_offset("outer", "q").unwrap(), 6);
    assert!(btf.member_offset("outer", "nope").is_err());
    assert!(btf.member_offset("missing", "a").is_err());
    assert_eq!(btf.tracepoint_args("t").unwrap(), 2);
}

/// A module blob on top of [`tiny_btf`]: typedef outer_t -> outer (id 8), struct
/// wrap { outer_t a; int tail; } (id 9), names from both string sections.
fn tiny_split_btf(base: &[u8]) -> Vec<u8> {
    let base_strings = sections(base).unwrap().1.len() as u32;
    let strings = b"\0wrap\0tail\0outer_t\0";
    let own = |s: &str| -> u32 {
        let needle = format!("\0{s}\0");
        base_strings
            + strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
            + 1
    };
    // "a" lives in the base's strings: `\0int\0outer\0a\0` puts it at 11.
    let base_a = 11;
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    let mut types = Vec::new();
    for w in [
        own("outer_t"),
        info(KIND_TYPEDEF, 0),
        4,
        own("wrap"),
        info(KIND_STRUCT, 2),
        12,
        base_a,
        8,
        0,
        own("tail"),
        1,
        64,
    ] {
        types.extend_from_slice(&w.to_le_bytes());
    }
    blob(&types, strings)
}

#[test]
fn split_btf_continues_ids_and_strings_of_its_base() {
    let base = tiny_btf();
    let btf = Btf::parse_split(&tiny_split_btf(&base), &base).unwrap();
    assert_eq!(btf.member_path_offset("wrap", &["tail"]).unwrap(), 8);
    // Through the typedef into the base's struct and its anonymous union.
    assert_eq!(btf.member_path_offset("wrap", &["a", "q"]).unwrap(), 6);
    assert_eq!(btf.member_path_offset("wrap", &["a", "x"]).unwrap(), 4);
    assert!(btf.member_path_offset("wrap", &["a", "nope"]).is_err());
    // Base types stay reachable.
    assert_eq!(btf.member_offset("outer", "q").unwrap(), 6);
}

#[test]
fn garbage_is_rejected() {
    assert!(Btf::parse(b"not btf at all, definitely not").is_err());
    let mut blob = tiny_btf();
    blob.truncate(30);
    assert!(Btf::parse(&blob).is_err());
}

/// The running kernel's BTF, checked against bpftool's own reading.
#[test]
fn running_kernel_offsets_match_bpftool() {
    // Every machine the tests run on has kernel BTF and bpftool (`cargo xtask
    // setup` installs it): their absence is a failure, not a pass.
    let path = Path::new("/sys/kernel/btf/vmlinux");
    assert!(
        path.exists(),
        "no kernel BTF at {}: this test needs a kernel built with CONFIG_DEBUG_INFO_BTF",
        path.display()
    );
    let btf = Btf::from_file(path).unwrap();
    let offsets = kernel_offsets(&btf).unwrap();
    let out = std::process::Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ])
        .output()
        .expect("bpftool is not installed: run `cargo xtask setup`");
    assert!(
        out.status.success(),
        "bpftool btf dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // In bpftool's raw dump, struct sk_buff's direct member `len` appears as
    // `'len' type_id=N bits_offset=B` right after the `STRUCT 'sk_buff'` line.
    let mut in_skb = false;
    let mut len_bits = None;
    for line in text.lines() {
        if line.starts_with('[') {
            in_skb = line.contains("STRUCT 'sk_buff' ");
            continue;
        }
        if in_skb && line.trim_start().starts_with("'len' ") {
            len_bits = line
                .split("bits_offset=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<u32>().ok());
        }
    }
    assert_eq!(Some(offsets.skb_len * 8), len_bits, "sk_buff.len offset");
    assert!(offsets.valid == OFFSETS_WITH_SKB || offsets.valid == OFFSETS_SOCK_ONLY);
}

//! A small tmpfs mounted for a test (a disk that can be filled), unmounted and
//! removed on drop, also when the test panics.

use std::path::{Path, PathBuf};

use crate::process::{run, try_run};

/// A mounted tmpfs.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`) on a fresh directory.
    pub fn mount(size: &str) -> Self {
        let path = std::env::temp_dir().join(crate::unique_name("wgpd"));
        std::fs::create_dir_all(&path).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        );
        Self { path }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills it to the last byte with files named `filler*`.
    pub fn fill(&self) {
        let filler = self.path.join("filler");
        let _ = try_run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", filler.display()),
                "bs=64k",
            ],
        );
        let _ = try_run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}.2", filler.display()),
                "bs=512",
            ],
        );
    }

    /// Removes the filler files: the space is back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
        let _ = std::fs::remove_file(self.path.join("filler.2"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
